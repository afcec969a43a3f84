import { describe, expect, it } from 'vitest';
import { CairnError, Code } from '../common/errors.js';
import { compileGlob, MAX_PATTERN_LENGTH } from '../common/glob.js';

const PATHS = [
  'top.txt',
  '.hidden',
  'reports',
  'reports/q1.csv',
  'reports/2026-01/q2.csv',
  'reports/.draft.csv',
  'runs/r1/metrics.json',
  'runs/r1/deep/metrics.json',
  'runs/r2/model.ckpt',
  'logs/a.log',
  'run[1]/f.txt',
  'a*b/g.txt',
  'a/b',
  'a/x/y/b',
  'ünï/€.txt',
  'emoji/😀.png',
];

function matching(pattern: string, anyDepth = false): string[] {
  const g = compileGlob(pattern, { anyDepth });
  return PATHS.filter((p) => g.matches(p));
}

function refused(pattern: string): string {
  try {
    compileGlob(pattern);
  } catch (err) {
    expect(err).toBeInstanceOf(CairnError);
    expect((err as CairnError).code).toBe(Code.INVALID_ARGUMENT);
    return (err as CairnError).message;
  }
  throw new Error(`${pattern} was accepted`);
}

describe('compileGlob', () => {
  it('matches stars, question marks, sets and globstars within and across segments, dot files included', () => {
    expect(matching('*.ckpt', true)).toEqual(['runs/r2/model.ckpt']);
    expect(matching('*.ckpt')).toEqual([]);
    expect(matching('reports/**')).toEqual(['reports', 'reports/q1.csv', 'reports/2026-01/q2.csv', 'reports/.draft.csv']);
    expect(matching('reports/*')).toEqual(['reports/q1.csv', 'reports/.draft.csv']);
    expect(matching('runs/*/metrics.json')).toEqual(['runs/r1/metrics.json']);
    expect(matching('runs/**/metrics.json')).toEqual(['runs/r1/metrics.json', 'runs/r1/deep/metrics.json']);
    expect(matching('a/**/b')).toEqual(['a/b', 'a/x/y/b']);
    expect(matching('.*', true)).toEqual(['.hidden', 'reports/.draft.csv']);
    expect(matching('logs/?.log')).toEqual(['logs/a.log']);
    expect(matching('reports/q[0-9].csv')).toEqual(['reports/q1.csv']);
    expect(matching('reports/q[!1].csv')).toEqual([]);
    expect(matching('reports/q[^2].csv')).toEqual(['reports/q1.csv']);
    expect(matching('reports/2026-*/**')).toEqual(['reports/2026-01/q2.csv']);
    // Within a segment "**" is a star, and "?" is one character even outside the BMP.
    expect(matching('run**/metrics.json')).toEqual([]);
    expect(matching('emoji/?.png')).toEqual(['emoji/😀.png']);
    expect(matching('ünï/?.txt')).toEqual(['ünï/€.txt']);
  });

  it('expands braces, nested ones too, and takes escaped characters literally', () => {
    expect(matching('{logs,runs/r2}/*')).toEqual(['runs/r2/model.ckpt', 'logs/a.log']);
    expect(matching('reports/{q1,2026-{01,02}/q2}.csv')).toEqual(['reports/q1.csv', 'reports/2026-01/q2.csv']);
    expect(matching('run\\[1\\]/*')).toEqual(['run[1]/f.txt']);
    expect(matching('a\\*b/*')).toEqual(['a*b/g.txt']);
    // An unclosed set and a brace without a comma are literal characters.
    expect(compileGlob('x[1').matches('x[1')).toBe(true);
    expect(compileGlob('x{1}').matches('x{1}')).toBe(true);
    expect(compileGlob('x[]]').matches('x]')).toBe(true);
    // Commas, braces and slashes inside a set are members of it, not syntax.
    expect(matching('reports/{q[1,2],summary}.csv')).toEqual(['reports/q1.csv']);
    expect(compileGlob('{[r,x],a}/**').matches('x/y/w.txt')).toBe(true);
    expect(compileGlob('a[{]b').matches('a{b')).toBe(true);
    expect(compileGlob('[/]x').matches('/x')).toBe(false);
  });

  it('a leading "!" matches every path the rest does not', () => {
    expect(matching('!reports/**')).toEqual(PATHS.filter((p) => p !== 'reports' && !p.startsWith('reports/')));
    expect(compileGlob('!reports/**').base).toBe('');
  });

  it('gives the literal directory a walk must enter, and none when there is no such single directory', () => {
    expect(compileGlob('reports/2026-*/**').base).toBe('reports');
    expect(compileGlob('reports/q1.csv').base).toBe('reports');
    expect(compileGlob('runs/r1/deep/*.json').base).toBe('runs/r1/deep');
    expect(compileGlob('run\\[1\\]/*').base).toBe('run[1]');
    expect(compileGlob('a/{b,c}/d').base).toBe('a');
    expect(compileGlob('{a,b}/x').base).toBe('');
    expect(compileGlob('**/x').base).toBe('');
    expect(compileGlob('*.ckpt', { anyDepth: true }).base).toBe('');
  });

  it('answers patterns that make backtracking matchers run for seconds per name, correctly', () => {
    // picomatch spent 25 s on the first of these against one 255-character name.
    const name = 'a'.repeat(255);
    const many = Array.from({ length: 200 }, (_, i) => `${'a'.repeat(i)}x${'a'.repeat(254 - i)}`);
    for (const pattern of ['*a*a*a*a*a*b', '*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b']) {
      const g = compileGlob(pattern, { anyDepth: true });
      expect(g.matches(name)).toBe(false);
      expect(g.matches(`d/${name}b`)).toBe(true);
      expect(many.filter((n) => g.matches(n))).toEqual([]);
    }
    const deep = `${Array.from({ length: 500 }, () => 'a').join('/')}/z`;
    expect(compileGlob('**/a/**/a/**/a/**/a/**/b').matches(deep)).toBe(false);
    expect(compileGlob('**/a/**/a/**/a/**/a/**/z').matches(deep)).toBe(true);
  });

  it('refuses an empty pattern, a bare "!", an overlong pattern and a brace explosion with INVALID_ARGUMENT', () => {
    expect(refused('')).toBe('empty glob pattern');
    expect(refused('!')).toBe('glob pattern "!" negates nothing');
    expect(refused('a'.repeat(MAX_PATTERN_LENGTH + 1))).toBe(`glob pattern of ${MAX_PATTERN_LENGTH + 1} characters; the limit is ${MAX_PATTERN_LENGTH}`);
    expect(refused('{a,b}'.repeat(9))).toBe('glob pattern expands to more than 256 alternatives');
    // 256 alternatives of a long pattern would each be matched in turn: the total is bounded too.
    expect(refused(`${'{,}'.repeat(8)}*${'a'.repeat(127)}b`)).toBe('glob pattern expands to more than 4096 characters of alternatives');
    expect(compileGlob('{a,b}'.repeat(8)).matches('abababab')).toBe(true);
  });
});

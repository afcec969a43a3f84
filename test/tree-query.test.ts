import { describe, expect, it } from 'vitest';
import { parseDurationMs, parseTimeArg } from '../common/durations.js';
import { hash, toHex } from '../common/hash.js';
import type { Node } from '../common/messages.js';
import { emptyNode, encodeTree } from '../common/tree.js';
import { diffTrees, type TreeChange } from '../server/tree-diff.js';
import { TreeFinder } from '../server/tree-find.js';

/**
 * Trees as the archiver makes them: encoded, content-addressed, so an identical directory
 * has the same id wherever it appears. `reads` counts what the walkers decode.
 */
class TreeStore {
  private readonly trees = new Map<string, Node[]>();
  reads = 0;

  readonly read = async (id: Buffer): Promise<Node[]> => {
    this.reads++;
    const nodes = this.trees.get(toHex(id));
    if (!nodes) throw new Error(`no tree ${toHex(id)}`);
    return nodes;
  };

  /** `spec`: name -> file content (string), nested spec (directory), or { link } (symlink). */
  put(spec: Spec): Buffer {
    const nodes = Object.keys(spec)
      .sort()
      .map((name) => {
        const v = spec[name];
        if (typeof v === 'string') {
          const n = emptyNode(name, 'FILE');
          return { ...n, mode: 0o644, mtimeNs: '1000000000', size: String(v.length), chunks: v ? [hash(Buffer.from(v))] : [] };
        }
        if ('link' in v) return { ...emptyNode(name, 'SYMLINK'), mode: 0o777, target: v.link as string };
        if ('meta' in v) return { ...(v.meta as Node), name };
        return { ...emptyNode(name, 'DIR'), mode: 0o755, subtree: this.put(v as Spec) };
      });
    const id = hash(encodeTree(nodes));
    this.trees.set(toHex(id), nodes);
    return id;
  }

  async diff(a: Buffer, b: Buffer): Promise<TreeChange[]> {
    this.reads = 0;
    const out: TreeChange[] = [];
    for await (const c of diffTrees(this.read, a, b)) out.push(c);
    return out;
  }
}

type Spec = { [name: string]: string | Spec | { link: string } | { meta: Node } };

const short = (cs: TreeChange[]) => cs.map((c) => `${c.change} ${c.type} ${c.path} ${c.oldSize}->${c.newSize}`);

describe('diffTrees', () => {
  it('reports added, removed, modified, metadata and type changes, each directory followed by its contents', async () => {
    const t = new TreeStore();
    const chmod: Node = { ...emptyNode('', 'FILE'), mode: 0o600, mtimeNs: '1000000000', size: '1', chunks: [hash(Buffer.from('m'))] };
    const a = t.put({ keep: { x: 'same' }, gone: { a: 'aa', deep: { b: 'bbb' } }, edit: 'old', perm: 'm', swap: 'file', link: { link: 'x' } });
    const b = t.put({ keep: { x: 'same' }, born: { c: 'cccc' }, edit: 'newer', perm: { meta: chmod }, swap: { inner: 'i' }, link: { link: 'y' } });
    expect(short(await t.diff(a, b))).toEqual([
      'added DIR born 0->0',
      'added FILE born/c 0->4',
      'modified FILE edit 3->5',
      'removed DIR gone 0->0',
      'removed FILE gone/a 2->0',
      'removed DIR gone/deep 0->0',
      'removed FILE gone/deep/b 3->0',
      'modified SYMLINK link 0->0',
      'metadata FILE perm 1->1',
      'removed FILE swap 4->0',
      'added DIR swap 0->0',
      'added FILE swap/inner 0->1',
    ]);
    // roots (2) + born + gone + gone/deep + swap; the unchanged "keep" is never decoded.
    expect(t.reads).toBe(6);
  });

  it('reads only the trees along a changed path', async () => {
    const t = new TreeStore();
    const dirs = (changed: number) => Object.fromEntries(Array.from({ length: 50 }, (_, i) => [`d${String(i).padStart(2, '0')}`, { f: i === changed ? 'changed' : `file ${i}` }]));
    const a = t.put(dirs(-1));
    const b = t.put(dirs(17));
    expect(short(await t.diff(a, b))).toEqual(['modified FILE d17/f 7->7']);
    expect(t.reads).toBe(4);
    expect(await t.diff(a, a)).toEqual([]);
    expect(t.reads).toBe(0);
  });

  it('reports a directory whose mode changed, and one whose mtime changed while its contents did not', async () => {
    const t = new TreeStore();
    const sub = t.put({ f: 'x' });
    const dir = (mode: number, mtimeNs: string): Node => ({ ...emptyNode('', 'DIR'), mode, mtimeNs, subtree: sub });
    const a = t.put({ d: { meta: dir(0o755, '1') } });
    const b = t.put({ d: { meta: dir(0o700, '1') } });
    const c = t.put({ d: { meta: dir(0o755, '2') } });
    expect(short(await t.diff(a, b))).toEqual(['metadata DIR d 0->0']);
    expect(short(await t.diff(a, c))).toEqual(['metadata DIR d 0->0']);
  });
});

describe('TreeFinder', () => {
  it('matches names at any depth without "/" and whole paths with it', async () => {
    const t = new TreeStore();
    const root = t.put({ 'top.csv': 'a', reports: { 'q1.csv': 'bb', sub: { 'deep.csv': 'ccc', 'x.txt': 'd' } }, '.hidden.csv': 'e' });
    const paths = async (pattern: string) => {
      const out: string[] = [];
      for await (const h of new TreeFinder(t.read, pattern).find(root)) out.push(`${h.path}:${h.type}:${h.size}`);
      return out;
    };
    expect(await paths('*.csv')).toEqual(['.hidden.csv:FILE:1', 'reports/q1.csv:FILE:2', 'reports/sub/deep.csv:FILE:3', 'top.csv:FILE:1']);
    expect(await paths('reports/*.csv')).toEqual(['reports/q1.csv:FILE:2']);
    expect(await paths('/reports/**')).toEqual(['reports:DIR:0', 'reports/q1.csv:FILE:2', 'reports/sub:DIR:0', 'reports/sub/deep.csv:FILE:3', 'reports/sub/x.txt:FILE:1']);
    expect(() => new TreeFinder(t.read, '/')).toThrow(/non-empty pattern/);
  });

  it('a negated pattern walks every directory, and an escaped one walks into the directory it names', async () => {
    const t = new TreeStore();
    const root = t.put({ reports: { 'q1.csv': 'a' }, logs: { 'a.log': 'b' }, 'run[1]': { 'f.txt': 'c' }, 'top.txt': 'd' });
    const paths = async (pattern: string) => {
      const out: string[] = [];
      for await (const h of new TreeFinder(t.read, pattern).find(root)) out.push(h.path);
      return out;
    };
    expect(await paths('!reports/**')).toEqual(['logs', 'logs/a.log', 'run[1]', 'run[1]/f.txt', 'top.txt']);
    expect(await paths('run\\[1\\]/*')).toEqual(['run[1]/f.txt']);
  });

  it('reads no directory outside the literal prefix of the pattern', async () => {
    const t = new TreeStore();
    const big = Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`other${i}`, { f: `x${i}` }]));
    const root = t.put({ ...big, reports: { a: { 'r.csv': 'r' } } });
    t.reads = 0;
    const hits = [];
    for await (const h of new TreeFinder(t.read, 'reports/a/*.csv').find(root)) hits.push(h.path);
    expect(hits).toEqual(['reports/a/r.csv']);
    expect(t.reads).toBe(3);
  });

  it('does not walk again a subtree it already walked at the same path, and still reports its matches', async () => {
    const t = new TreeStore();
    const dirs = (n: number) => Object.fromEntries(Array.from({ length: 30 }, (_, i) => [`d${i}`, { 'f.csv': i === 0 ? `v${n}` : `same ${i}` }]));
    const roots = [t.put(dirs(1)), t.put(dirs(2)), t.put(dirs(2))];
    const finder = new TreeFinder(t.read, '*.csv');
    const perRoot: Array<{ reads: number; hits: number }> = [];
    for (const root of roots) {
      t.reads = 0;
      let hits = 0;
      for await (const _ of finder.find(root)) hits++;
      perRoot.push({ reads: t.reads, hits });
    }
    // First: root + 30 dirs. Second: root + the one changed dir. Third: same root as the second, replayed.
    expect(perRoot).toEqual([
      { reads: 31, hits: 30 },
      { reads: 2, hits: 30 },
      { reads: 0, hits: 30 },
    ]);
  });
});

describe('durations', () => {
  it('parses elapsed durations with minutes as "m" and refuses what is not one', () => {
    expect(parseDurationMs('26h')).toBe(26 * 3600_000);
    expect(parseDurationMs('30m')).toBe(1800_000);
    expect(parseDurationMs('2w')).toBe(14 * 86400_000);
    expect(parseDurationMs('1d12h')).toBe(36 * 3600_000);
    expect(() => parseDurationMs('7')).toThrow(/invalid duration "7"/);
    expect(() => parseDurationMs('7y')).toThrow(/unknown unit "y"/);
    expect(() => parseDurationMs('')).toThrow(/empty/);
  });

  it('turns --since/--until text into RFC 3339', () => {
    const now = Date.parse('2026-11-22T12:00:00Z');
    expect(parseTimeArg('7d', '--since', now)).toBe('2026-11-15T12:00:00.000Z');
    expect(parseTimeArg('2026-11-01', '--until', now)).toBe('2026-11-01T00:00:00.000Z');
    expect(parseTimeArg('2026-11-01T05:06:07+02:00', '--until', now)).toBe('2026-11-01T03:06:07.000Z');
    expect(() => parseTimeArg('June', '--since', now)).toThrow(/--since "June" is neither a duration/);
    expect(() => parseTimeArg('2026-02-30', '--since', now)).toThrow(/--since "2026-02-30" is neither a duration/);
    expect(parseTimeArg('2016-12-31T23:59:60Z', '--until', now)).toBe('2017-01-01T00:00:00.000Z');
  });
});

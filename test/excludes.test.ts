import { execFileSync } from 'node:child_process';
import { lstat, mkdir, mkdtemp, readdir, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import fc from 'fast-check';
import ignore from 'ignore';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../common/errors.js';
import { DEFAULT_EXCLUDES, ExcludeMatcher, type ExcludeOptions, parseSize } from '../client/excludes.js';

const SIGNATURE = 'Signature: 8a477f597d28d172789f06886806bc55';

let scratch: string;
beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'cairn-excludes-'));
});
afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

/**
 * Builds a tree from relative paths: a string is a file's content, a number a (sparse) file of
 * that many bytes, and a path ending in '/' an empty directory.
 */
let trees = 0;
async function makeTree(spec: Record<string, string | number>): Promise<string> {
  const root = join(scratch, `t${trees++}`);
  await mkdir(root);
  for (const [rel, content] of Object.entries(spec)) {
    const abs = join(root, rel);
    if (rel.endsWith('/')) {
      await mkdir(abs, { recursive: true });
      continue;
    }
    await mkdir(dirname(abs), { recursive: true });
    await writeFile(abs, typeof content === 'string' ? content : '');
    if (typeof content === 'number') await truncate(abs, content);
  }
  return root;
}

/** Walks `root` the way the scanner must: prune directories before descending, filter files. */
async function walk(root: string, matcher: ExcludeMatcher): Promise<string[]> {
  const kept: string[] = [];
  async function visit(rel: string): Promise<void> {
    const entries = await readdir(rel === '' ? root : join(root, rel), { withFileTypes: true });
    for (const entry of entries) {
      const childRel = rel === '' ? entry.name : `${rel}/${entry.name}`;
      const childAbs = join(root, childRel);
      if (entry.isDirectory()) {
        if (matcher.excludesDir(childRel) || (await matcher.excludesCacheDir(childAbs))) continue;
        await visit(childRel);
      } else if (!matcher.excludesFile(childRel, (await lstat(childAbs)).size)) {
        kept.push(childRel);
      }
    }
  }
  await visit('');
  return kept.sort();
}

function matcher(opts: Partial<ExcludeOptions>): Promise<ExcludeMatcher> {
  return ExcludeMatcher.create({
    excludes: [],
    excludeFiles: [],
    defaultExcludes: false,
    excludeCaches: false,
    ...opts,
  });
}

async function scan(spec: Record<string, string | number>, opts: Partial<ExcludeOptions>): Promise<string[]> {
  return walk(await makeTree(spec), await matcher(opts));
}

describe('default excludes', () => {
  const spec = {
    '.git/config': 'x',
    '.gitignore': 'x',
    'node_modules/left-pad/index.js': 'x',
    'web/node_modules/react/index.js': 'x',
    'src/__pycache__/m.cpython-311.pyc': 'x',
    'src/m.py': 'x',
    'src/stale.pyc': 'x',
    '.venv/bin/python': 'x',
    'tools/venv/lib/site.py': 'x',
    // 'venv/' only matches directories, so a file of that name is data like any other.
    'notes/venv': 'x',
    '.DS_Store': 'x',
    'photos/.DS_Store': 'x',
    'photos/a.jpg': 'x',
    '.cache/pip/wheel': 'x',
  };

  it('leave out VCS metadata, dependencies, bytecode, virtualenvs and caches', async () => {
    expect(await scan(spec, { defaultExcludes: true })).toEqual([
      '.gitignore',
      'notes/venv',
      'photos/a.jpg',
      'src/m.py',
    ]);
  });

  it('can be switched off', async () => {
    expect(await scan(spec, { defaultExcludes: false })).toEqual(Object.keys(spec).sort());
  });

  it('come first, so a user negation re-includes one of them', async () => {
    expect(await scan(spec, { defaultExcludes: true, excludes: ['!node_modules/'] })).toEqual([
      '.gitignore',
      'node_modules/left-pad/index.js',
      'notes/venv',
      'photos/a.jpg',
      'src/m.py',
      'web/node_modules/react/index.js',
    ]);
  });

  it('are the documented list', () => {
    expect(DEFAULT_EXCLUDES).toEqual(['.git/', 'node_modules/', '__pycache__/', '*.pyc', '.venv/', 'venv/', '.DS_Store', '.cache/']);
  });
});

describe('negations', () => {
  const spec = {
    'data/raw.bin': 'x',
    'data/keep/a.csv': 'x',
    'data/keep/deep/b.csv': 'x',
    'data/keep/scratch.tmp': 'x',
    'src/app.log': 'x',
    'src/important.log': 'x',
    'important.log': 'x',
  };

  it('cannot re-include anything under an excluded directory (gitignore refuses)', async () => {
    // 'data/' excludes the directory itself; git never looks inside it, so '!data/keep/' has
    // nothing to act on. The scanner matches that by pruning data/ before descending.
    expect(await scan(spec, { excludes: ['data/', '!data/keep/'] })).toEqual([
      'important.log',
      'src/app.log',
      'src/important.log',
    ]);
  });

  it('re-include a subdirectory when the parent\'s contents, not the parent, are excluded', async () => {
    // 'data/*' leaves data/ itself in, so its children are matched one by one and the
    // negation applies; a later positive pattern narrows it again.
    expect(await scan(spec, { excludes: ['data/*', '!data/keep/', 'data/keep/*.tmp'] })).toEqual([
      'data/keep/a.csv',
      'data/keep/deep/b.csv',
      'important.log',
      'src/app.log',
      'src/important.log',
    ]);
  });

  it('re-include files by name at any depth', async () => {
    expect(await scan(spec, { excludes: ['*.log', '!important.log'] })).toEqual([
      'data/keep/a.csv',
      'data/keep/deep/b.csv',
      'data/keep/scratch.tmp',
      'data/raw.bin',
      'important.log',
      'src/important.log',
    ]);
  });

  describe('extraction/*/activations/', () => {
    const runs = {
      'extraction/README.md': 'x',
      'extraction/run1/activations/layer0.npy': 'x',
      'extraction/run1/logits.npy': 'x',
      'extraction/run2/activations/layer0.npy': 'x',
      'extraction/run2/tokens.txt': 'x',
    };

    it('is refused under an excluded parent extraction/*/', async () => {
      // extraction/run1/ itself is excluded, so the negation can never reach activations/.
      expect(await scan(runs, { excludes: ['extraction/*/', '!extraction/*/activations/'] })).toEqual([
        'extraction/README.md',
      ]);
    });

    it('works when the runs\' contents, extraction/*/*, are excluded instead', async () => {
      expect(await scan(runs, { excludes: ['extraction/*/*', '!extraction/*/activations/'] })).toEqual([
        'extraction/README.md',
        'extraction/run1/activations/layer0.npy',
        'extraction/run2/activations/layer0.npy',
      ]);
    });
  });
});

describe('anchoring', () => {
  const spec = {
    'build/out.o': 'x',
    'src/build/gen.c': 'x',
    'docs/tmp/draft.md': 'x',
    'site/docs/tmp/draft.md': 'x',
    'tmp/a': 'x',
    'x/y/tmp/b': 'x',
    'keep.txt': 'x',
  };

  it('a leading slash anchors a pattern to the snapshot root', async () => {
    expect(await scan(spec, { excludes: ['/build'] })).toEqual([
      'docs/tmp/draft.md',
      'keep.txt',
      'site/docs/tmp/draft.md',
      'src/build/gen.c',
      'tmp/a',
      'x/y/tmp/b',
    ]);
  });

  it('a pattern without a slash matches at any depth', async () => {
    expect(await scan(spec, { excludes: ['build'] })).toEqual([
      'docs/tmp/draft.md',
      'keep.txt',
      'site/docs/tmp/draft.md',
      'tmp/a',
      'x/y/tmp/b',
    ]);
  });

  it('a slash in the middle anchors too', async () => {
    expect(await scan(spec, { excludes: ['docs/tmp'] })).toEqual([
      'build/out.o',
      'keep.txt',
      'site/docs/tmp/draft.md',
      'src/build/gen.c',
      'tmp/a',
      'x/y/tmp/b',
    ]);
  });

  it('a leading **/ matches at any depth', async () => {
    expect(await scan(spec, { excludes: ['**/tmp'] })).toEqual(['build/out.o', 'keep.txt', 'src/build/gen.c']);
  });

  it('*/reports/ matches exactly one level down, because * never crosses a slash', async () => {
    const reports = {
      'reports/root.pdf': 'x',
      'team/reports/q1.pdf': 'x',
      'team/sub/reports/q2.pdf': 'x',
      'other/reports': 'a file, not a directory',
    };
    expect(await scan(reports, { excludes: ['*/reports/'] })).toEqual([
      'other/reports',
      'reports/root.pdf',
      'team/sub/reports/q2.pdf',
    ]);
    expect(await scan(reports, { excludes: ['**/reports/'] })).toEqual(['other/reports']);
  });
});

describe('directories and files with the same name', () => {
  const spec = {
    'logs/app.log': 'x',
    'svc/logs/svc.log': 'x',
    'notes/logs': 'a file',
    'main.c': 'x',
  };

  it('a trailing slash matches directories only', async () => {
    expect(await scan(spec, { excludes: ['logs/'] })).toEqual(['main.c', 'notes/logs']);
  });

  it('without it, both', async () => {
    expect(await scan(spec, { excludes: ['logs'] })).toEqual(['main.c']);
  });

  it('matching is case-sensitive, as git is on Linux', async () => {
    expect(await scan(spec, { excludes: ['LOGS', '*.C'] })).toEqual(Object.keys(spec).sort());
  });
});

describe('exclude files', () => {
  const spec = {
    'a.tmp': 'x',
    'keep.tmp': 'x',
    'sub/b.tmp': 'x',
    '# not a comment here': 'x',
    '#literal': 'x',
    'cache/x': 'x',
    'main.c': 'x',
  };

  it('read one pattern a line, skipping comments and blank lines, tolerating CRLF', async () => {
    const file = join(scratch, 'excl-crlf');
    await writeFile(file, '# not a comment here\r\n\r\n*.tmp\r\n   \r\n\\#literal\r\ncache/\r\n');
    expect(await scan(spec, { excludeFiles: [file] })).toEqual(['# not a comment here', 'main.c']);
  });

  it('are read in order, before --exclude patterns, so later rules win', async () => {
    const first = join(scratch, 'excl-1');
    const second = join(scratch, 'excl-2');
    await writeFile(first, '*.tmp\n');
    await writeFile(second, '!keep.tmp\nmain.c\n');
    expect(await scan(spec, { excludeFiles: [first, second], excludes: ['!main.c'] })).toEqual([
      '# not a comment here',
      '#literal',
      'cache/x',
      'keep.tmp',
      'main.c',
    ]);
  });

  it('that cannot be read are an INVALID_ARGUMENT naming the file', async () => {
    const missing = join(scratch, 'no-such-exclude-file');
    await expect(matcher({ excludeFiles: [missing] })).rejects.toMatchObject({
      code: Code.INVALID_ARGUMENT,
      message: expect.stringContaining(missing),
    });
    await expect(matcher({ excludeFiles: [scratch] })).rejects.toMatchObject({
      code: Code.INVALID_ARGUMENT,
      message: expect.stringContaining(scratch),
    });
  });
});

describe('CACHEDIR.TAG', () => {
  const spec = {
    'tagged/CACHEDIR.TAG': `${SIGNATURE}\n# This file is a cache directory tag.\n`,
    'tagged/blob': 'x',
    'exact/CACHEDIR.TAG': SIGNATURE,
    'exact/blob': 'x',
    'wrong/CACHEDIR.TAG': SIGNATURE.replace('8a47', '8a48'),
    'wrong/blob': 'x',
    'short/CACHEDIR.TAG': SIGNATURE.slice(0, 42),
    'short/blob': 'x',
    'lowercase/cachedir.tag': SIGNATURE,
    'lowercase/blob': 'x',
    'tagdir/CACHEDIR.TAG/inner': SIGNATURE,
    'outer/CACHEDIR.TAG': 'not a tag',
    'outer/inner/CACHEDIR.TAG': SIGNATURE,
    'outer/inner/blob': 'x',
    'plain.txt': 'x',
  };

  it('excludes directories whose tag starts with the signature, and only those', async () => {
    expect(await scan(spec, { excludeCaches: true })).toEqual([
      'lowercase/blob',
      'lowercase/cachedir.tag',
      'outer/CACHEDIR.TAG',
      'plain.txt',
      'short/CACHEDIR.TAG',
      'short/blob',
      'tagdir/CACHEDIR.TAG/inner',
      'wrong/CACHEDIR.TAG',
      'wrong/blob',
    ]);
  });

  it('is off unless asked for', async () => {
    expect(await scan(spec, { excludeCaches: false })).toEqual(Object.keys(spec).sort());
  });

  it('does not hang on a FIFO named CACHEDIR.TAG', async () => {
    const root = await makeTree({ 'pipe/blob': 'x' });
    execFileSync('mkfifo', [join(root, 'pipe', 'CACHEDIR.TAG')]);
    expect(await walk(root, await matcher({ excludeCaches: true }))).toEqual(['pipe/CACHEDIR.TAG', 'pipe/blob']);
  });
});

describe('excludeLargerThan', () => {
  it('leaves out files larger than the limit and keeps one of exactly the limit', async () => {
    const spec = { 'empty': 0, 'at-limit': 1024 * 1024, 'over': 1024 * 1024 + 1, 'sub/huge': 5 * 1024 ** 3 };
    expect(await scan(spec, { excludeLargerThan: parseSize('1MiB') })).toEqual(['at-limit', 'empty']);
  });
});

describe('includes', () => {
  const spec = {
    'setup.py': 'x',
    'pkg/mod.py': 'x',
    'pkg/data.bin': 'x',
    'pkg/deep/er/x.py': 'x',
    'docs/index.md': 'x',
    'docs/img/logo.png': 'x',
    'tests/test_mod.py': 'x',
    'README.md': 'x',
  };

  it('keep only matching files, but still descend everywhere to find them', async () => {
    expect(await scan(spec, { includes: ['*.py', 'docs/'] })).toEqual([
      'docs/img/logo.png',
      'docs/index.md',
      'pkg/deep/er/x.py',
      'pkg/mod.py',
      'setup.py',
      'tests/test_mod.py',
    ]);
  });

  it('take negations, and never override excludes', async () => {
    expect(await scan(spec, { includes: ['*.py', '!setup.py'], excludes: ['tests/'] })).toEqual([
      'pkg/deep/er/x.py',
      'pkg/mod.py',
    ]);
  });

  it('when empty, keep everything', async () => {
    expect(await scan(spec, { includes: [] })).toEqual(Object.keys(spec).sort());
  });
});

it('gives the same answers after the lookup cache is dropped', async () => {
  const m = await matcher({ excludes: ['data/*', '!data/keep/', '*.tmp'] });
  // 3 lookups a round cross the 100k cache-reset boundary several times, with answers that
  // depend on cached parent directories on both sides of it.
  let wrong = 0;
  for (let i = 0; i < 120_000; i++) {
    const dir = `d${i % 977}`;
    if (!m.excludesDir(`data/${dir}`)) wrong++;
    if (m.excludesFile(`data/keep/${dir}/f${i}`, 1)) wrong++;
    if (!m.excludesFile(`data/keep/${dir}/f${i}.tmp`, 1)) wrong++;
  }
  expect(wrong).toBe(0);
});

describe('parseSize', () => {
  it.each([
    ['1234', 1234],
    ['0', 0],
    ['  42  ', 42],
    ['7B', 7],
    ['300k', 300 * 1024],
    ['300K', 300 * 1024],
    ['2KiB', 2048],
    ['2kb', 2000],
    ['500MB', 500_000_000],
    ['500M', 500 * 1024 ** 2],
    ['1.5G', 1.5 * 1024 ** 3],
    ['10GiB', 10 * 1024 ** 3],
    ['10 GiB', 10 * 1024 ** 3],
    ['2GB', 2e9],
    ['3T', 3 * 1024 ** 4],
    ['1TB', 1e12],
    ['1.1kb', 1100],
    ['0.5k', 512],
  ])('%s → %d', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  it.each(['', 'abc', 'GiB', '-5', '1.2.3', '1e3', '.5G', '10XB', '10Gi', '10KiBB', '5 M B', '9999999999T'])(
    'rejects %j, naming it',
    (text) => {
      let caught: unknown;
      try {
        parseSize(text);
      } catch (err) {
        caught = err;
      }
      expect(caught).toMatchObject({ code: Code.INVALID_ARGUMENT, message: expect.stringContaining(`"${text}"`) });
    },
  );
});

describe('basename rules, decided by the entry name alone', () => {
  // The matcher answers rules like '*.pyc' or 'node_modules/' with its own glob instead of
  // `ignore`; on every entry of a kept directory the two must agree.
  const patternChar = fc.constantFrom('a', 'b', '.', '*', '?', '[', ']', '-', '!', '^', ' ', 'é');
  const nameChar = fc.constantFrom('a', 'b', '.', '-', ' ', '[', ']', '!', '^', 'é');
  const pattern = fc
    .tuple(fc.array(patternChar, { minLength: 1, maxLength: 6 }), fc.boolean())
    .map(([cs, dirOnly]) => cs.join('') + (dirOnly ? '/' : ''));
  const name = fc
    .array(nameChar, { minLength: 1, maxLength: 6 })
    .map((cs) => cs.join(''))
    .filter((n) => n !== '.' && n !== '..');

  it('agree with ignore on files and directories, at the top and deeper', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(pattern, { minLength: 1, maxLength: 3 }), name, fc.boolean(), async (patterns, entry, isDir) => {
        const m = await matcher({ excludes: patterns });
        const ig = ignore({ ignorecase: false }).add(patterns);
        for (const parent of ['', 'kept/dir']) {
          // The scanner never asks about an entry below an excluded directory.
          if (parent && (ig.ignores('kept/') || ig.ignores('kept/dir/'))) continue;
          const rel = parent ? `${parent}/${entry}` : entry;
          const expected = ig.ignores(isDir ? `${rel}/` : rel);
          expect(isDir ? m.excludesDir(rel) : m.excludesFile(rel, 1), `${JSON.stringify(patterns)} on ${isDir ? 'dir' : 'file'} ${JSON.stringify(rel)}`).toBe(expected);
        }
      }),
      { numRuns: 3000, seed: 7 },
    );
  });
});

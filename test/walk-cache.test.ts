import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExcludeMatcher } from '../client/excludes.js';
import { DirReader, prescan, type ScanEntry } from '../client/scan.js';
import { WalkCache } from '../client/walk-cache.js';
import { cleanupTmp, tmpDir } from './harness.js';

async function stampOf(abs: string) {
  const st = await fs.lstat(abs, { bigint: true });
  return { ino: st.ino, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs };
}

const plain = (entries: ScanEntry[]) => entries.map((e) => ({ name: e.name, abs: e.abs, rel: e.rel, type: e.type, mode: e.st.mode, size: e.st.size, ino: e.st.ino, linked: e.st.linked, mtimeNs: e.st.mtimeNs, ctimeNs: e.st.ctimeNs }));

describe('WalkCache: the pre-scan\'s listings replayed to the snapshot walk', () => {
  let root: string;
  let excludes: ExcludeMatcher;
  beforeAll(async () => {
    root = tmpDir('cairn-walk-');
    await fs.mkdir(path.join(root, 'sub', 'node_modules'), { recursive: true });
    await fs.writeFile(path.join(root, 'a.txt'), 'a');
    await fs.writeFile(path.join(root, 'sub', 'b.bin'), Buffer.alloc(5000));
    await fs.link(path.join(root, 'sub', 'b.bin'), path.join(root, 'sub', 'b-twin.bin'));
    await fs.writeFile(path.join(root, 'sub', 'node_modules', 'x.js'), 'x');
    await fs.symlink('a.txt', path.join(root, 'link'));
    // Before 1970: a negative mtime must come back negative (node's utimes takes a negative
    // time for "now", touch does not).
    execFileSync('touch', ['-m', '-d', '1969-12-31T00:00:00Z', path.join(root, 'a.txt')]);
    excludes = await ExcludeMatcher.create({ excludes: [], includes: [], excludeFiles: [], defaultExcludes: true, excludeCaches: true });
  });
  afterAll(() => cleanupTmp());

  it('gives back exactly what a fresh listing sees, once, with the same skips reported', async () => {
    const cache = new WalkCache();
    await prescan([root], excludes, undefined, cache);
    const fresh = { skipped: 0, problems: 0 };
    const freshReader = new DirReader(excludes, { problem: () => fresh.problems++, skipped: () => fresh.skipped++ });
    const replayed = { skipped: 0, problems: 0 };
    const replayReader = new DirReader(excludes, { problem: () => replayed.problems++, skipped: () => replayed.skipped++ }, undefined, { cache, role: 'replay' });
    for (const [abs, rel] of [[root, ''], [path.join(root, 'sub'), 'sub']]) {
      const want = await freshReader.entries(abs, rel, abs === root);
      const got = await replayReader.entries(abs, rel, abs === root);
      expect(plain(got)).toEqual(plain(want));
      // The hard-link count comes back too: the archiver records it for the restore.
      if (rel === 'sub') expect(got.find((e) => e.name === 'b.bin')?.st.linked?.nlink).toBe(2);
    }
    expect(replayed).toEqual(fresh);
    // node_modules/ was skipped by the default excludes, in both.
    expect(fresh.skipped).toBe(1);
    const a = (await freshReader.entries(root, '', true)).find((e) => e.name === 'a.txt')!;
    expect(a.st.mtimeNs).toBe(-86_400_000_000_000n);
    // Given out once: the listing is gone from the cache afterwards.
    expect(cache.take(root, '', await stampOf(root))).toBeUndefined();
  });

  it('keeps no more than its budget: the rest is listed again', async () => {
    const cache = new WalkCache(3);
    await prescan([root], excludes, undefined, cache);
    // The root holds three entries (a.txt, link, sub) and fits; sub's would pass the budget.
    expect(cache.take(root, '', await stampOf(root))?.entries.map((e) => e.name)).toEqual(['a.txt', 'link', 'sub']);
    expect(cache.take(path.join(root, 'sub'), 'sub', await stampOf(path.join(root, 'sub')))).toBeUndefined();
  });

  it('replays the problems and skips a listing reported, in the walk\'s own hooks', async () => {
    const cache = new WalkCache();
    const err = Object.assign(new Error('permission denied'), { code: 'EACCES' });
    const locked = path.join(root, 'locked-parent');
    await fs.mkdir(locked);
    cache.put(locked, await stampOf(locked), { entries: [], problems: [{ path: path.join(locked, 'secret'), err }], skipped: 2 });
    const seen: Array<[string, unknown]> = [];
    let skipped = 0;
    const reader = new DirReader(excludes, { problem: (p, e) => seen.push([p, e]), skipped: () => skipped++ }, undefined, { cache, role: 'replay' });
    expect(await reader.entries(locked, 'locked-parent', false)).toEqual([]);
    expect(seen).toEqual([[path.join(locked, 'secret'), err]]);
    expect(skipped).toBe(2);
    await fs.rm(locked, { recursive: true });
  });

  it('lists a directory again when it changed since the pre-scan: a file added or removed is seen', async () => {
    const dir = path.join(root, 'changing');
    await fs.mkdir(dir);
    await fs.writeFile(path.join(dir, 'old'), 'old');
    const cache = new WalkCache();
    await prescan([root], excludes, undefined, cache);
    await fs.rm(path.join(dir, 'old'));
    await fs.writeFile(path.join(dir, 'new'), 'new');
    const reader = new DirReader(excludes, { problem: () => undefined, skipped: () => undefined }, undefined, { cache, role: 'replay' });
    expect((await reader.entries(dir, 'changing', false)).map((e) => e.name)).toEqual(['new']);
    // An unchanged directory still comes from the cache: its stamp matches.
    expect(cache.take(path.join(root, 'sub'), 'sub', await stampOf(path.join(root, 'sub')))?.entries.map((e) => e.name)).toEqual(['b-twin.bin', 'b.bin']);
    await fs.rm(dir, { recursive: true });
  });
});

import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parsePack } from '../common/pack-format.js';
import { cleanupTmp, cliJson, runCli, startServer, tmpDir, type ServerHandle } from './harness.js';

interface SnapshotOut {
  snapshot: { id: string; rootTree: string };
  stats: { files: number; dirs: number; filesReused: number; bytesRead: number };
  treeCache?: { hits: number; misses: number; written: number };
}

/** Three levels of directories with a few files each: 7 trees. */
async function makeTree(root: string): Promise<void> {
  for (const dir of ['', 'a', 'b', 'a/x', 'a/y', 'b/z', 'b/z/deep']) {
    await fs.mkdir(path.join(root, dir), { recursive: true });
    for (let i = 0; i < 3; i++) await fs.writeFile(path.join(root, dir, `f${i}.txt`), `${dir} file ${i}\n`.repeat(50));
  }
}

async function treeFiles(cacheDir: string): Promise<string[]> {
  const base = path.join(cacheDir, 'trees');
  const out: string[] = [];
  for (const lineage of await fs.readdir(base).catch(() => [])) for (const f of await fs.readdir(path.join(base, lineage))) out.push(path.join(base, lineage, f));
  return out.sort();
}

describe('local tree cache', () => {
  let server: ServerHandle;
  let data: string;
  let cache: string;
  const snap = (server: ServerHandle, extra: string[] = [], dataset = 'tc') =>
    cliJson<SnapshotOut>(['--json', 'snapshot', data, '--dataset', dataset, '--host', 'h', ...extra], { server: server.addr });

  beforeAll(async () => {
    server = await startServer();
    data = tmpDir('cairn-tc-data-');
    cache = tmpDir('cairn-tc-cache-');
    await makeTree(data);
  });
  afterAll(async () => {
    await server?.stop();
    cleanupTmp();
  });

  it('keeps the new snapshot\'s trees, and the next snapshot reads every parent tree from it', async () => {
    const first = await snap(server, ['--cache-dir', cache]);
    expect(first.stats.dirs).toBe(7);
    expect(first.treeCache).toEqual({ hits: 0, misses: 0, written: 7 });
    const files = await treeFiles(cache);
    expect(files.length).toBe(7);
    // Each file holds the tree its name says: the BLAKE3 of the bytes.
    const { blake3 } = await import('@napi-rs/blake-hash');
    for (const f of files) expect(blake3(await fs.readFile(f)).toString('hex')).toBe(path.basename(f));
    expect(files.map((f) => path.basename(f))).toContain(first.snapshot.rootTree);
    // The user's alone: tree files name every path backed up. Tagged, so backups of $HOME skip it.
    for (const f of files) expect((await fs.stat(f)).mode & 0o777).toBe(0o600);
    expect((await fs.stat(path.dirname(files[0]))).mode & 0o777).toBe(0o700);
    expect(await fs.readFile(path.join(cache, 'CACHEDIR.TAG'), 'utf8')).toMatch(/^Signature: 8a477f597d28d172789f06886806bc55/);

    const second = await snap(server, ['--cache-dir', cache]);
    expect(second.treeCache).toEqual({ hits: 7, misses: 0, written: 0 });
    expect(second.stats.filesReused).toBe(21);
    expect(second.snapshot.rootTree).toBe(first.snapshot.rootTree);
  });

  it('asks the server for a damaged cached tree, replaces it, and still reuses the unchanged files', async () => {
    const files = await treeFiles(cache);
    const victim = files[0];
    const bytes = await fs.readFile(victim);
    bytes[bytes.length - 1] ^= 0xff;
    await fs.writeFile(victim, bytes);
    const r = await snap(server, ['--cache-dir', cache]);
    expect(r.treeCache?.misses).toBe(1);
    expect(r.treeCache?.hits).toBe(6);
    expect(r.stats.filesReused).toBe(21);
    const { blake3 } = await import('@napi-rs/blake-hash');
    expect(blake3(await fs.readFile(victim)).toString('hex')).toBe(path.basename(victim));
  });

  it('does not read what is not a cached tree under a tree\'s name (a link to /dev/zero)', async () => {
    const files = await treeFiles(cache);
    await fs.rm(files[1]);
    await fs.symlink('/dev/zero', files[1]);
    const r = await snap(server, ['--cache-dir', cache]);
    expect(r.treeCache?.misses).toBe(1);
    expect(r.stats.filesReused).toBe(21);
    expect((await fs.lstat(files[1])).isFile()).toBe(true);
  });

  it('holds only the latest snapshot\'s trees after a directory is removed', async () => {
    await fs.rm(path.join(data, 'b', 'z'), { recursive: true });
    const r = await snap(server, ['--cache-dir', cache, '--allow-shrink']);
    expect(r.stats.dirs).toBe(5);
    const names = (await treeFiles(cache)).map((f) => path.basename(f));
    expect(names.length).toBe(5);
    expect(names).toContain(r.snapshot.rootTree);
  });

  it('lets a snapshot compare against its parent with the server unable to serve a single tree', async () => {
    // The decisive check that the cache is used: delete every tree pack from the store.
    const dir = tmpDir('cairn-tc-srv-');
    const opts = { store: `file:${path.join(dir, 'store')}`, indexDir: path.join(dir, 'index') };
    const own = tmpDir('cairn-tc-cache2-');
    let s = await startServer(opts);
    await snap(s, ['--cache-dir', own], 'gone');
    await s.stop();
    let removed = 0;
    const walk = async (d: string): Promise<void> => {
      for (const e of await fs.readdir(d, { withFileTypes: true })) {
        const p = path.join(d, e.name);
        if (e.isDirectory()) await walk(p);
        else if (p.includes(`${path.sep}packs${path.sep}`) && parsePack(await fs.readFile(p), p).every((x) => x.kind === 'TREE')) {
          await fs.rm(p);
          removed++;
        }
      }
    };
    await walk(path.join(dir, 'store'));
    expect(removed).toBeGreaterThan(0);
    s = await startServer(opts);
    try {
      const cached = await snap(s, ['--cache-dir', own], 'gone');
      expect(cached.treeCache?.misses).toBe(0);
      expect(cached.stats.filesReused).toBe(cached.stats.files);
      expect(cached.stats.bytesRead).toBe(0);
      // Without the cache the parent's trees are unreadable, so every file is read again.
      const uncached = await snap(s, ['--no-cache'], 'gone');
      expect(uncached.treeCache).toBeUndefined();
      expect(uncached.stats.filesReused).toBe(0);
      expect(uncached.stats.bytesRead).toBeGreaterThan(0);
    } finally {
      await s.stop();
    }
  });

  it('creates nothing in the cache for a dry run', async () => {
    const fresh = path.join(tmpDir('cairn-tc-dry-'), 'cache');
    const r = await runCli(['--json', 'snapshot', data, '--dataset', 'dry', '--host', 'h', '--cache-dir', fresh, '--dry-run'], { server: server.addr });
    expect(r.code).toBe(0);
    await expect(fs.stat(fresh)).rejects.toThrow(/ENOENT/);
  });

  it('never fails a snapshot over a cache it cannot write', async () => {
    const blocked = path.join(tmpDir('cairn-tc-blocked-'), 'not-a-dir');
    await fs.writeFile(blocked, 'a file where the cache directory would go');
    const r = await snap(server, ['--cache-dir', blocked], 'blocked');
    expect(r.snapshot.id).toMatch(/^[0-9a-f]{64}$/);
    expect(r.treeCache).toEqual({ hits: 0, misses: 0, written: 0 });
    const again = await runCli(['--json', 'snapshot', data, '--dataset', 'blocked', '--host', 'h', '--cache-dir', blocked], { server: server.addr });
    expect(again.code).toBe(0);
    expect((JSON.parse(again.stdout.trim().split('\n').pop()!) as SnapshotOut).stats.filesReused).toBe(15);
  });
});

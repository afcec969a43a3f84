import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Chunker, DEFAULT_CHUNKER_PARAMS } from '../common/chunker.js';
import { CairnError, Code } from '../common/errors.js';
import { ExcludeMatcher } from '../client/excludes.js';
import type { BlobSink } from '../client/archiver.js';
import type { WalkCache } from '../client/walk-cache.js';
import { cleanupTmp, tmpDir } from './harness.js';

/** From the build: the archiver's small-file reader runs worker threads (`npm test` builds first). */
async function load() {
  const { Archiver } = (await import('../dist/client/archiver.js')) as typeof import('../client/archiver.js');
  const { SmallFileReader } = (await import('../dist/client/small-file-reader.js')) as typeof import('../client/small-file-reader.js');
  return { Archiver, SmallFileReader };
}

describe('Archiver', () => {
  afterAll(() => cleanupTmp());

  it('fails the walk with the sink\'s error when an upload fails while the walk is elsewhere, never as an unhandled rejection', async () => {
    const root = tmpDir('cairn-archiver-');
    // The root's small files (a*) are queued first, and their offers fail while the walk is
    // inside z/, whose directories' flushes send the root's batch along with their own.
    for (let i = 0; i < 20; i++) await fs.writeFile(path.join(root, `a${i}`), `small ${i}`);
    for (let d = 0; d < 2000; d++) await fs.mkdir(path.join(root, 'z', `d${d}`), { recursive: true });
    const refused = new CairnError(Code.UNAVAILABLE, 'the upload stream broke');
    const sink: BlobSink = {
      offer: async () => undefined,
      offerPacked: async () => {
        throw refused;
      },
    };
    const { Archiver, SmallFileReader } = await load();
    const small = new SmallFileReader(3, DEFAULT_CHUNKER_PARAMS.minSize, 1);
    // Its worker started, so the root's batch comes back while the walk is still in z/.
    const warm = small.read(path.join(root, 'a0'), 7);
    small.flush();
    const w = await warm;
    if (w.kind === 'read') w.done();
    const excludes = await ExcludeMatcher.create({ excludes: [], includes: [], excludeFiles: [], defaultExcludes: true, excludeCaches: true });
    const archiver = new Archiver({ chunker: new Chunker(DEFAULT_CHUNKER_PARAMS), sink, small, excludes, trees: { readParent: async () => [], made: () => undefined } });
    const unhandled: unknown[] = [];
    const onUnhandled = (err: unknown) => unhandled.push(err);
    process.on('unhandledRejection', onUnhandled);
    try {
      await expect(archiver.archive([root], undefined)).rejects.toBe(refused);
      await new Promise((r) => setTimeout(r, 50));
    } finally {
      process.off('unhandledRejection', onUnhandled);
      await small.close();
    }
    expect(unhandled).toEqual([]);
  });

  it('walks on to the next directory while a large file of the previous one is still being read', async () => {
    const root = tmpDir('cairn-archiver-');
    await fs.mkdir(path.join(root, 'a'));
    await fs.mkdir(path.join(root, 'b'));
    await fs.writeFile(path.join(root, 'a', 'big.db'), Buffer.alloc(DEFAULT_CHUNKER_PARAMS.minSize * 2, 7));
    await fs.writeFile(path.join(root, 'b', 'later.json'), '{}');
    // b/'s tree is made only once the walk has finished b/; the chunk of a/big.db is held until
    // then. A walk that waits for a/ to finish before it enters b/ never gets there: the chunk
    // is let go after 30 s, and the order of events says which came first.
    const events: string[] = [];
    let bMade!: () => void;
    const bDone = new Promise<void>((resolve) => (bMade = resolve));
    const sink: BlobSink = {
      offer: async (_id, _raw, kind) => {
        if (kind !== 'DATA') return;
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([bDone, new Promise((r) => (timer = setTimeout(r, 30_000)))]);
        clearTimeout(timer);
        events.push('a/big.db read');
      },
      offerPacked: async () => undefined,
    };
    const { Archiver, SmallFileReader } = await load();
    const small = new SmallFileReader(3, DEFAULT_CHUNKER_PARAMS.minSize, 1);
    const excludes = await ExcludeMatcher.create({ excludes: [], includes: [], excludeFiles: [], defaultExcludes: true, excludeCaches: true });
    const { decodeTree } = await import('../common/tree.js');
    const made = new Map<string, Buffer>();
    const trees = {
      readParent: async () => [],
      made: (id: Buffer, bytes: Buffer) => {
        made.set(id.toString('hex'), bytes);
        if (decodeTree(bytes, 'tree').some((n) => n.name === 'later.json')) {
          events.push('b/ made');
          bMade();
        }
      },
    };
    const archiver = new Archiver({ chunker: new Chunker(DEFAULT_CHUNKER_PARAMS), sink, small, excludes, trees });
    try {
      const rootId = await archiver.archive([root], undefined);
      expect(events).toEqual(['b/ made', 'a/big.db read']);
      // The tree still lists a/ before b/, with a/ holding the file it read.
      const top = decodeTree(made.get(rootId.toString('hex'))!, 'root');
      expect(top.map((n) => n.name)).toEqual(['a', 'b']);
      const a = decodeTree(made.get(top[0].subtree.toString('hex'))!, 'a');
      expect(a.map((n) => [n.name, n.size, n.chunks.length])).toEqual([['big.db', String(DEFAULT_CHUNKER_PARAMS.minSize * 2), 1]]);
    } finally {
      await small.close();
    }
  });

  /** Archives `root` (one file) with a sink that calls `onFirstChunk` at the file's first data chunk; the file's node and the problems. */
  async function archiveOneFile(root: string, onFirstChunk: () => Promise<void>) {
    let offers = 0;
    const sink: BlobSink = {
      offer: async (_id, _raw, kind) => {
        if (kind === 'DATA' && offers++ === 0) await onFirstChunk();
      },
      offerPacked: async () => undefined,
    };
    const { nodes, problems } = await archiveTree(root, sink);
    return { node: [...nodes.values()][0], problems, offers };
  }

  /** Archives `root` through `sink` (and the pre-scan's `walked` listings); the root tree's nodes by name, and the archiver's stats and problems. */
  async function archiveTree(root: string, sink: BlobSink, walked?: WalkCache) {
    const { decodeTree } = await import('../common/tree.js');
    const { Archiver, SmallFileReader } = await load();
    const small = new SmallFileReader(3, DEFAULT_CHUNKER_PARAMS.minSize, 1);
    const excludes = await ExcludeMatcher.create({ excludes: [], includes: [], excludeFiles: [], defaultExcludes: true, excludeCaches: true });
    const made = new Map<string, Buffer>();
    const archiver = new Archiver({ chunker: new Chunker(DEFAULT_CHUNKER_PARAMS), sink, small, excludes, walked, trees: { readParent: async () => [], made: (id, bytes) => void made.set(id.toString('hex'), bytes) } });
    try {
      const rootId = await archiver.archive([root], undefined);
      return { nodes: new Map(decodeTree(made.get(rootId.toString('hex'))!, 'root').map((n) => [n.name, n])), stats: archiver.stats, problems: archiver.problems };
    } finally {
      await small.close();
    }
  }

  /** The chunk ids the archiver records for a file holding `data`. */
  async function idsOf(data: Buffer): Promise<Buffer[]> {
    const { splitBuffer } = await import('../common/chunk-reader.js');
    const { hash } = await import('../common/hash.js');
    let pos = 0;
    return splitBuffer(data, new Chunker(DEFAULT_CHUNKER_PARAMS)).map((len) => hash(data.subarray(pos, (pos += len))));
  }

  /**
   * A tree whose two large files come first: they hold both read buffers, so the hard-linked
   * a.bin is opened only after one of them has ended, which `sink` (waiting for `change` at
   * their first chunk) lets happen only once `change` has run.
   */
  async function raceAfterListing(root: string, change: () => Promise<void>): Promise<BlobSink> {
    const big = Buffer.alloc(DEFAULT_CHUNKER_PARAMS.minSize * 2, 7);
    await fs.writeFile(path.join(root, '0-big.bin'), big);
    await fs.writeFile(path.join(root, '1-big.bin'), big);
    let changed: Promise<void> | undefined;
    return {
      offer: async (_id, _raw, kind) => {
        if (kind !== 'DATA') return;
        changed ??= change();
        await changed;
      },
      offerPacked: async () => undefined,
    };
  }

  const LINKED = DEFAULT_CHUNKER_PARAMS.minSize * 2;

  it('reads a hard-linked file once for all its paths, but not through a path a new file was renamed over after the listing', async () => {
    const root = tmpDir('cairn-archiver-');
    const old = Buffer.alloc(LINKED, 1);
    const renamed = Buffer.alloc(LINKED + 3, 2);
    await fs.writeFile(path.join(root, 'a.bin'), old);
    await fs.link(path.join(root, 'a.bin'), path.join(root, 'b.bin'));
    await fs.link(path.join(root, 'a.bin'), path.join(root, 'c.bin'));
    const sink = await raceAfterListing(root, async () => {
      await fs.writeFile(path.join(root, 'a.tmp'), renamed);
      await fs.rename(path.join(root, 'a.tmp'), path.join(root, 'a.bin'));
    });
    const { nodes, stats, problems } = await archiveTree(root, sink);
    expect(nodes.get('a.bin')!.chunks).toEqual(await idsOf(renamed));
    // b.bin and c.bin still hold the old file: each reads it (a race this rare need not be cheap).
    expect(nodes.get('b.bin')!.chunks).toEqual(await idsOf(old));
    expect(nodes.get('c.bin')!.chunks).toEqual(await idsOf(old));
    expect(nodes.get('b.bin')!.links).toBe(3);
    expect(stats.bytesRead).toBe(2 * LINKED + renamed.length + 2 * old.length);
    expect(problems).toEqual([]);
  });

  it('shares a hard-linked file\'s chunks with its other paths, and not when a new file took its path and freed inode since the listing', async () => {
    const root = tmpDir('cairn-archiver-');
    const old = Buffer.alloc(LINKED, 1);
    await fs.writeFile(path.join(root, 'a.bin'), old);
    await fs.link(path.join(root, 'a.bin'), path.join(root, 'b.bin'));
    // Unchanged: b.bin takes a.bin's chunks and is not read.
    const shared = await archiveTree(root, { offer: async () => undefined, offerPacked: async () => undefined });
    expect(shared.nodes.get('b.bin')!.chunks).toEqual(await idsOf(old));
    expect(shared.stats.bytesRead).toBe(LINKED);
    // Both names gone and a new file renamed over a.bin: ext4 hands it the freed inode number.
    const renamed = Buffer.alloc(LINKED, 2);
    const sink = await raceAfterListing(root, async () => {
      await fs.rm(path.join(root, 'a.bin'));
      await fs.rm(path.join(root, 'b.bin'));
      await fs.writeFile(path.join(root, 'a.tmp'), renamed);
      await fs.rename(path.join(root, 'a.tmp'), path.join(root, 'a.bin'));
    });
    const { nodes, problems } = await archiveTree(root, sink);
    expect(nodes.get('a.bin')!.chunks).toEqual(await idsOf(renamed));
    // b.bin is gone, not recorded with bytes it never held.
    expect(nodes.has('b.bin')).toBe(false);
    expect(problems.map((p) => [path.basename(p.path), p.message.split(':')[0]])).toEqual([['b.bin', 'ENOENT']]);
  });

  it('does not share a first read that saw the file change twice: the other paths read it themselves', async () => {
    const root = tmpDir('cairn-archiver-');
    await fs.writeFile(path.join(root, 'a.bin'), Buffer.alloc(LINKED, 1));
    await fs.link(path.join(root, 'a.bin'), path.join(root, 'b.bin'));
    const last = Buffer.alloc(LINKED, 3);
    // Rewritten in place at the first chunk of each of a.bin's two reads: 1s, then 2s, then 3s.
    const rewrites = [Buffer.alloc(LINKED, 2), last];
    const seen = new Set<number>();
    const sink: BlobSink = {
      offer: async (_id, raw, kind) => {
        if (kind !== 'DATA' || seen.has(raw[0]) || rewrites.length === 0) return;
        seen.add(raw[0]);
        await fs.writeFile(path.join(root, 'a.bin'), rewrites.shift()!);
      },
      offerPacked: async () => undefined,
    };
    const { nodes, problems } = await archiveTree(root, sink);
    expect(problems.map((p) => [path.basename(p.path), p.message.split(':')[0]])).toEqual([['a.bin', 'ECHANGED']]);
    // What is on disk after the walk, read through b.bin itself.
    expect(nodes.get('b.bin')!.chunks).toEqual(await idsOf(last));
  });

  it('reads a hard-linked file again through a path listed with other times: the file changed between the listings', async () => {
    const root = tmpDir('cairn-archiver-');
    await fs.mkdir(path.join(root, 'a'));
    await fs.mkdir(path.join(root, 'b'));
    // Large enough to be shared (the batched small-file reader's files are read per path).
    const data = Buffer.alloc(LINKED, 5);
    await fs.writeFile(path.join(root, 'a', 'x.bin'), data);
    await fs.link(path.join(root, 'a', 'x.bin'), path.join(root, 'b', 'x.bin'));
    const { WalkCache } = await import('../dist/client/walk-cache.js');
    const { entryStat } = await import('../dist/client/scan.js');
    // b/ as a listing taken after the file's mtime moved on: what the walk sees there.
    const walked = new WalkCache();
    const bDir = await fs.lstat(path.join(root, 'b'), { bigint: true });
    const st = { ...entryStat(await fs.lstat(path.join(root, 'b', 'x.bin'), { bigint: true })).st };
    st.mtimeNs += 1_000_000n;
    walked.put(path.join(root, 'b'), { ino: bDir.ino, mtimeNs: bDir.mtimeNs, ctimeNs: bDir.ctimeNs }, { entries: [{ name: 'x.bin', abs: path.join(root, 'b', 'x.bin'), rel: 'b/x.bin', type: 'FILE', st }], problems: [], skipped: 0 });
    const { stats } = await archiveTree(root, { offer: async () => undefined, offerPacked: async () => undefined }, walked);
    expect(stats.bytesRead).toBe(2 * data.length);
  });

  it('reads a file again when it changed while it was read, and records the second read', async () => {
    const root = tmpDir('cairn-archiver-');
    const file = path.join(root, 'ckpt.bin');
    const after = Buffer.alloc(DEFAULT_CHUNKER_PARAMS.minSize * 2 + 5, 2);
    await fs.writeFile(file, Buffer.alloc(DEFAULT_CHUNKER_PARAMS.minSize * 2, 1));
    const { hash } = await import('../common/hash.js');
    // The checkpoint is saved again while the first read of it is under way.
    const { node, problems } = await archiveOneFile(root, () => fs.writeFile(file, after));
    expect(problems).toEqual([]);
    expect(node.size).toBe(String(after.length));
    expect(node.chunks).toEqual([hash(after)]);
  });

  it('reads a file again when it was rewritten in place with its mtime put back (cp -p), as its ctime says', async () => {
    const root = tmpDir('cairn-archiver-');
    const file = path.join(root, 'ckpt.bin');
    const after = Buffer.alloc(DEFAULT_CHUNKER_PARAMS.minSize * 2, 2);
    await fs.writeFile(file, Buffer.alloc(DEFAULT_CHUNKER_PARAMS.minSize * 2, 1));
    // touch -r keeps the nanoseconds, as cp -p does; fs.utimes would round them.
    const times = path.join(root, '..', 'ckpt.times');
    execFileSync('touch', ['-r', file, times]);
    const { hash } = await import('../common/hash.js');
    const { node, problems, offers } = await archiveOneFile(root, async () => {
      const fh = await fs.open(file, 'r+');
      await fh.write(after, 0, after.length, 0);
      await fh.close();
      execFileSync('touch', ['-r', times, file]);
    });
    expect(problems).toEqual([]);
    expect(offers).toBe(2);
    expect(node.chunks).toEqual([hash(after)]);
  });

  it('stops the whole walk when a directory it has left fails, and stores no tree after', async () => {
    const root = tmpDir('cairn-archiver-');
    // a/'s small files fail their upload after the walk has left a/ for z/, whose 2000
    // directories it would otherwise list to the end before noticing.
    await fs.mkdir(path.join(root, 'a'));
    for (let i = 0; i < 20; i++) await fs.writeFile(path.join(root, 'a', `f${i}`), `small ${i}`);
    for (let d = 0; d < 2000; d++) await fs.mkdir(path.join(root, 'z', `d${d}`), { recursive: true });
    const refused = new CairnError(Code.UNAVAILABLE, 'the upload stream broke');
    let failedAtDirs = -1;
    const sink: BlobSink = {
      offer: async () => undefined,
      offerPacked: async () => {
        if (failedAtDirs < 0) failedAtDirs = archiver.stats.dirs;
        throw refused;
      },
    };
    const { Archiver, SmallFileReader } = await load();
    const small = new SmallFileReader(3, DEFAULT_CHUNKER_PARAMS.minSize, 1);
    const warm = small.read(path.join(root, 'a', 'f0'), 7);
    small.flush();
    const w = await warm;
    if (w.kind === 'read') w.done();
    const excludes = await ExcludeMatcher.create({ excludes: [], includes: [], excludeFiles: [], defaultExcludes: true, excludeCaches: true });
    let treesMade = 0;
    let treesAfterFailure = 0;
    const trees = {
      readParent: async () => [],
      made: () => {
        treesMade++;
        if (failedAtDirs >= 0) treesAfterFailure++;
      },
    };
    const archiver = new Archiver({ chunker: new Chunker(DEFAULT_CHUNKER_PARAMS), sink, small, excludes, trees });
    try {
      await expect(archiver.archive([root], undefined)).rejects.toBe(refused);
      await new Promise((r) => setTimeout(r, 50));
    } finally {
      await small.close();
    }
    // The failure came while the walk was inside z/, and it listed few directories after it,
    // where it used to list all 2000 before the root's loop noticed.
    // (The walk reaches z/ before any worker reply can be handled; the margin of 1000 leaves
    // room for a worker thread that a loaded machine delays.)
    expect(failedAtDirs).toBeGreaterThan(2);
    expect(archiver.stats.dirs - failedAtDirs).toBeLessThan(1000);
    expect(treesAfterFailure).toBe(0);
    expect(treesMade).toBeLessThan(archiver.stats.dirs);
  });
});

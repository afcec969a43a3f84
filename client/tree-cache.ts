import { closeSync, fstatSync, openSync, promises as fs, readSync } from 'node:fs';
import path from 'node:path';
import { hash, toHex } from '../common/hash.js';
import type { Node } from '../common/messages.js';
import { decodeTree } from '../common/tree.js';
import { MAX_CLIENT_MESSAGE_BYTES } from './limits.js';
import { READ_REGULAR_FLAGS } from './regular-file.js';

/** Beyond this many trees in one snapshot the cache stops tracking them and is not pruned. */
const MAX_TRACKED = 1_000_000;
/** Tree writes at once: a first run records every directory's tree, and unbounded that was an fd and a buffer per directory. */
const WRITES_IN_FLIGHT = 8;
const TREE_NAME = /^[0-9a-f]{64}$/;
const TEMP_NAME = /^\.[0-9a-f]{64}\.\d+\.tmp$/;
/** https://bford.info/cachedir/: backups of $HOME (cairn's own default excludes among them) skip the cache. */
const CACHEDIR_TAG = 'Signature: 8a477f597d28d172789f06886806bc55\n# This file marks the cairn tree cache: backups need not include it.\n';

/**
 * A cached file's bytes, if it is a regular file no larger than the largest tree a server
 * accepts: whatever else sits under a tree's name (a link to /dev/zero, a huge file) is not read.
 */
function readBounded(file: string): Buffer {
  // Synchronous, like the scan's lstat calls: a cached tree is a few kilobytes on a local
  // disk, and four trips through the libuv pool per tree (open, fstat, read, close) kept the
  // walk of an unchanged snapshot waiting at every directory.
  const fd = openSync(file, READ_REGULAR_FLAGS);
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.size > MAX_CLIENT_MESSAGE_BYTES) throw Object.assign(new Error('not a cached tree'), { code: 'ENOTTREE' });
    const bytes = Buffer.allocUnsafe(st.size);
    const bytesRead = readSync(fd, bytes, 0, st.size, 0);
    return bytes.subarray(0, bytesRead);
  } finally {
    closeSync(fd);
  }
}

export interface TreeCacheStats {
  /** Parent trees read from the cache: no round trip to the server. */
  hits: number;
  /** Parent trees the cache did not have, or had damaged, so the server sent them. */
  misses: number;
  /** Trees of the new snapshot written to the cache. */
  written: number;
}

/**
 * The trees of a dataset's latest snapshot, kept on the client like restic's cache, so the
 * next snapshot compares against its parent without asking the server for a tree per
 * directory: over a network each of those is a round trip, and even on loopback they were
 * the largest wait of an unchanged snapshot.
 *
 * One directory per repository, dataset and host holds one file per tree, named by its id.
 * The id is the BLAKE3 of the bytes, so a file that does not hash to its name (a torn write,
 * a flipped bit, a hand edit) is not used: the server is asked instead. The cache is an
 * optimisation only: any error reading or writing it costs a round trip, never a snapshot.
 * Writes go to a temporary name and are renamed into place, so kill -9 leaves no half tree
 * under a tree's name. After a commit, the trees not in the new snapshot are removed.
 */
export class TreeCache {
  readonly stats: TreeCacheStats = { hits: 0, misses: 0, written: 0 };
  private readonly made = new Set<string>();
  private present: Set<string> | undefined;
  private writable = true;
  private readonly writes = new Set<Promise<void>>();

  private constructor(readonly dir: string) {}

  /**
   * The cache of one lineage (repository, dataset, host) under `root`. The directories are
   * the user's alone: tree files hold every path, size and time backed up, and a small file's
   * chunk id would confirm a guess at its content. `readOnly` (a dry run) creates nothing.
   */
  static async open(root: string, repositoryId: string, dataset: string, host: string, readOnly = false): Promise<TreeCache> {
    const lineage = hash(Buffer.from(JSON.stringify([repositoryId, dataset, host]))).toString('hex').slice(0, 32);
    const cache = new TreeCache(path.join(root, 'trees', lineage));
    cache.writable = !readOnly;
    try {
      if (!readOnly) {
        await fs.mkdir(cache.dir, { recursive: true, mode: 0o700 });
        await fs.writeFile(path.join(root, 'CACHEDIR.TAG'), CACHEDIR_TAG, { flag: 'wx', mode: 0o600 }).catch(() => undefined);
      }
      cache.present = new Set((await fs.readdir(cache.dir)).filter((n) => TREE_NAME.test(n)));
    } catch {
      cache.writable = false;
      cache.present = new Set();
    }
    return cache;
  }

  /** The tree `id` from the cache, or undefined when it is absent or damaged. */
  async get(id: Buffer): Promise<Node[] | undefined> {
    const hex = toHex(id);
    if (!this.present?.has(hex)) return undefined;
    let bytes: Buffer;
    try {
      bytes = readBounded(path.join(this.dir, hex));
    } catch (err) {
      // A link or a device under a tree's name is replaced; a file missing (its write still in
      // flight) or unreadable for now (EMFILE, EACCES) is left alone.
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ELOOP' || code === 'ENOTTREE') await this.discard(hex);
      return undefined;
    }
    try {
      if (!hash(bytes).equals(id)) throw new Error('damaged');
      const nodes = decodeTree(bytes, `cached tree ${hex}`);
      this.stats.hits++;
      return nodes;
    } catch {
      await this.discard(hex);
      return undefined;
    }
  }

  /** Removes a bad entry (the link itself, not what it points to), so this run writes it afresh. */
  private async discard(hex: string): Promise<void> {
    this.present?.delete(hex);
    await fs.rm(path.join(this.dir, hex), { force: true }).catch(() => undefined);
  }

  /** The cache first, then `fetch` (the server); counts which one answered. */
  async read(id: Buffer, fetch: (id: Buffer) => Promise<Node[]>): Promise<Node[]> {
    const cached = await this.get(id);
    if (cached) return cached;
    this.stats.misses++;
    return fetch(id);
  }

  /**
   * A tree of the snapshot being made, as stored: written unless the cache has it. Resolves
   * once the write has a place among WRITES_IN_FLIGHT, so the walk slows rather than piles up.
   */
  async record(id: Buffer, bytes: Buffer): Promise<void> {
    const hex = toHex(id);
    if (this.made.size < MAX_TRACKED) this.made.add(hex);
    if (!this.writable || this.present?.has(hex)) return;
    this.present?.add(hex);
    while (this.writes.size >= WRITES_IN_FLIGHT) await Promise.race(this.writes);
    const write = this.write(hex, bytes).finally(() => this.writes.delete(write));
    this.writes.add(write);
  }

  private async write(hex: string, bytes: Buffer): Promise<void> {
    const tmp = path.join(this.dir, `.${hex}.${process.pid}.tmp`);
    try {
      await fs.writeFile(tmp, bytes, { mode: 0o600 });
      await fs.rename(tmp, path.join(this.dir, hex));
      this.stats.written++;
    } catch {
      // A full or read-only disk: stop writing for this run; the snapshot goes on.
      this.writable = false;
      this.present?.delete(hex);
      await fs.rm(tmp, { force: true }).catch(() => undefined);
    }
  }

  /** Waits for the writes started so far. */
  async flush(): Promise<void> {
    while (this.writes.size > 0) await Promise.all([...this.writes]);
  }

  /**
   * After the new snapshot is committed: removes every tree that is not in it (and any
   * temporary file a killed run left), so the cache holds one snapshot's trees. Only names the
   * cache itself writes are touched, and only in a real directory, never through a link.
   */
  async prune(): Promise<void> {
    await this.flush();
    if (this.made.size >= MAX_TRACKED) return;
    let names: string[];
    try {
      if (!(await fs.lstat(this.dir)).isDirectory()) return;
      names = await fs.readdir(this.dir);
    } catch {
      return;
    }
    for (const name of names) {
      if (this.made.has(name) || !(TREE_NAME.test(name) || TEMP_NAME.test(name))) continue;
      await fs.rm(path.join(this.dir, name), { force: true }).catch(() => undefined);
    }
  }
}

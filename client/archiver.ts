import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Chunker } from '../common/chunker.js';
import { chunkViews, readBufferSize } from '../common/chunk-reader.js';
import { hash } from '../common/hash.js';
import type { Node } from '../common/messages.js';
import { compareNames, emptyNode, encodeTree } from '../common/tree.js';
import type { ExcludeMatcher } from './excludes.js';
import { DirReader, entryStat, readLinkTarget, rootRel, type EntryStat, type ScanEntry } from './scan.js';
import { noLongerRegular, READ_REGULAR_FLAGS } from './regular-file.js';
import type { WalkCache } from './walk-cache.js';
import type { SmallFile, SmallFileReader } from './small-file-reader.js';

export interface ArchiveStats {
  files: number;
  dirs: number;
  symlinks: number;
  bytes: number;
  bytesRead: number;
  filesReused: number;
  /** Bytes of the files reused from the parent: neither opened nor read. */
  bytesReused: number;
  errors: number;
  skipped: number;
}

export interface ArchiveProblem {
  path: string;
  message: string;
}

/**
 * Where chunks and trees go: the uploader in a real run, a FindMissing counter in a dry run.
 * `raw` is a view of a read buffer, valid only until the returned promise settles: a sink
 * that keeps the bytes copies them.
 */
export interface BlobSink {
  offer(id: Buffer, raw: Buffer, kind: 'DATA' | 'TREE'): Promise<void>;
  /** A data chunk the small-file reader has already compressed, or found not worth it. */
  offerPacked(id: Buffer, stored: Buffer, rawLength: number, compressed: boolean): Promise<void>;
}

/** Where trees come from and go besides the sink: the parent snapshot's, and the new ones as stored. */
export interface TreeSource {
  /** A tree of the parent snapshot. */
  readParent(id: Buffer): Promise<Node[]>;
  /** Every tree of the snapshot being made, offered or not (an unchanged one is not). */
  made(id: Buffer, bytes: Buffer): Promise<void> | void;
}

/** Large files at once, each with its own read buffer (2 x the maximum chunk); a small file
 *  that grew past its stat size since the walk takes one of these too. */
const LARGE_FILES_IN_FLIGHT = 2;

/**
 * Directories whose entries are all under way but whose reads have not ended, while the walk
 * goes on: each holds its listing and its parent's tree until then, so the count bounds that
 * memory. Their reads share the bounds above, so more would not read more at once.
 */
const DIRS_FINISHING_AT_ONCE = 64;

/**
 * Hard-linked files whose first path this snapshot read and whose other paths it has not all
 * met yet, remembered (~1.3 KB each, and ~220 bytes per further chunk) so those are not read
 * again; past this many they are.
 */
const MAX_LINKED_FILES = 20_000;

/** A counting semaphore that hands out the read buffers of large files. */
class Slots<T> {
  private waiters: Array<(v: T) => void> = [];
  constructor(private readonly free: T[]) {}

  async take(): Promise<T> {
    const v = this.free.pop();
    if (v !== undefined) return v;
    return new Promise<T>((resolve) => this.waiters.push(resolve));
  }

  give(v: T): void {
    const w = this.waiters.shift();
    if (w) w(v);
    else this.free.push(v);
  }
}

export interface ArchiverParts {
  chunker: Chunker;
  sink: BlobSink;
  small: SmallFileReader;
  excludes: ExcludeMatcher;
  trees: TreeSource;
  /** The pre-scan's listings, used instead of listing those directories again. */
  walked?: WalkCache;
  onProgress?: (stats: ArchiveStats) => void;
  signal?: AbortSignal;
}

/**
 * Walks directories depth first, turns each into a tree blob (entries sorted by name), and
 * reuses the chunk list of every file whose size, mtime, ctime and inode match the parent
 * snapshot, so an unchanged file is never opened and an unchanged directory produces the
 * same tree id.
 */
export class Archiver {
  readonly stats: ArchiveStats = { files: 0, dirs: 0, symlinks: 0, bytes: 0, bytesRead: 0, filesReused: 0, bytesReused: 0, errors: 0, skipped: 0 };
  readonly problems: ArchiveProblem[] = [];
  /** What each root the user named holds in the new snapshot: files read or reused, bytes. */
  readonly roots: Array<{ path: string; files: number; bytes: number }> = [];
  private readonly reader: DirReader;
  private readonly readBuffers: Slots<Buffer>;
  private dirsFinishing = 0;
  /**
   * Hard-linked files by device and inode: the stat their first path was listed with, its node
   * to come (undefined when the bytes read may not be what that stat describes), and how many
   * of their paths are still to be met.
   */
  private readonly linked = new Map<string, { st: EntryStat; node: Promise<Node | undefined>; pathsLeft: number }>();
  /** The first failure of any read or directory: the walk stops wherever it is, not just where it happened. */
  private failure: { err: unknown } | undefined;

  private readonly chunker: Chunker;
  private readonly sink: BlobSink;
  private readonly small: SmallFileReader;
  private readonly trees: TreeSource;
  private readonly onProgress: (stats: ArchiveStats) => void;

  constructor(parts: ArchiverParts) {
    ({ chunker: this.chunker, sink: this.sink, small: this.small, trees: this.trees } = parts);
    this.onProgress = parts.onProgress ?? (() => undefined);
    const walked = parts.walked && { cache: parts.walked, role: 'replay' as const };
    this.reader = new DirReader(parts.excludes, { problem: (p, err) => this.problem(p, err), skipped: () => this.stats.skipped++ }, parts.signal, walked);
    this.readBuffers = new Slots<Buffer>(this.chunker.readBuffers(LARGE_FILES_IN_FLIGHT, readBufferSize(this.chunker)));
  }

  private problem(p: string, err: unknown): void {
    this.stats.errors++;
    const e = err as NodeJS.ErrnoException;
    this.problems.push({ path: p, message: e.code ? `${e.code}: ${e.message}` : String(e.message ?? err) });
  }

  /**
   * Archives `roots`. One root: its contents are the snapshot's root tree. Several: the root
   * tree holds one directory per root, named by its base name.
   */
  async archive(roots: string[], parentRoot: Buffer | undefined): Promise<Buffer> {
    if (roots.length === 1) return this.archiveRoot(roots[0], '', parentRoot);
    const parentNodes = parentRoot ? await this.parentMap(parentRoot) : new Map<string, Node>();
    const nodes: Node[] = [];
    for (const root of [...roots].sort((a, b) => compareNames(path.basename(a), path.basename(b)))) {
      const name = rootRel(roots, root);
      const st = await fs.stat(root, { bigint: true });
      const prev = parentNodes.get(name);
      const subtree = await this.archiveRoot(root, name, prev?.type === 'DIR' ? prev.subtree : undefined);
      nodes.push(dirNode(name, entryStat(st).st, subtree));
    }
    return this.storeTree(nodes, parentRoot);
  }

  private async parentMap(treeId: Buffer): Promise<Map<string, Node>> {
    try {
      return new Map((await this.trees.readParent(treeId)).map((n) => [n.name, n]));
    } catch {
      // An unreadable parent only costs re-reading: every file is then treated as changed.
      return new Map();
    }
  }

  /** One root the user named, walked whole: its tree id once every read below it has ended. */
  private async archiveRoot(abs: string, rel: string, parentTree: Buffer | undefined): Promise<Buffer> {
    // Roots are walked one after another and a root's tree settles only when every read
    // below it has ended, so the counters' growth meanwhile is this root's alone.
    const [files, bytes] = [this.stats.files, this.stats.bytes];
    try {
      const tree = await (await this.walkDir(abs, rel, parentTree, true)).tree;
      this.roots.push({ path: abs, files: this.stats.files - files, bytes: this.stats.bytes - bytes });
      return tree;
    } catch (err) {
      // Directories still finishing behind the walk store no tree once it has failed.
      this.failure ??= { err };
      throw err;
    }
  }

  /**
   * Lists a directory and starts reading its changed files, descending into subdirectories as
   * it meets them; returns once every entry is under way, with the directory's tree id to come
   * when the reads end. The walk then goes on to the next directory while this one finishes,
   * up to DIRS_FINISHING_AT_ONCE of them: a directory of databases to re-read would otherwise
   * hold the walk, and with it the reads of every directory after it.
   */
  private async walkDir(abs: string, rel: string, parentTree: Buffer | undefined, isRoot: boolean): Promise<{ tree: Promise<Buffer> }> {
    if (this.failure) throw this.failure.err;
    this.stats.dirs++;
    const parentNodes = parentTree ? await this.parentMap(parentTree) : new Map<string, Node>();
    // Each entry, and the parent's node of the same name, is let go once it is under way: a
    // directory of 120,000 files held both for all of them until its last file was read.
    const entries: Array<ScanEntry | undefined> = await this.reader.entries(abs, rel, isRoot);
    const nodes: Array<Node | undefined> = new Array(entries.length);
    // Files are read concurrently while the walk goes on (small ones in batches on worker
    // threads, large ones LARGE_FILES_IN_FLIGHT at a time), and so are subdirectories still
    // finishing; each result lands at its entry's index, so the tree keeps the sorted order.
    // A failure (the upload broke, a reader thread died) is caught at once and recorded for
    // the whole walk, which stops at its next entry or directory; this directory's tree then
    // rejects with it. Left pending until then, it would reject while the walk is elsewhere,
    // with nothing yet listening.
    const reading: Array<Promise<void>> = [];
    const track = (p: Promise<void>) => reading.push(p.catch((err: unknown) => void (this.failure ??= { err })));
    for (let i = 0; i < entries.length && !this.failure; i++) {
      const e = entries[i]!;
      entries[i] = undefined;
      const prev = parentNodes.get(e.name);
      parentNodes.delete(e.name);
      if (e.type === 'DIR') {
        const sub = await this.walkDir(e.abs, e.rel, prev?.type === 'DIR' ? prev.subtree : undefined, false);
        track(sub.tree.then((subtree) => void (nodes[i] = dirNode(e.name, e.st, subtree))));
      } else if (e.type === 'SYMLINK') {
        try {
          const node = metaNode(e.name, 'SYMLINK', e.st);
          node.target = await readLinkTarget(e.abs);
          nodes[i] = node;
          this.stats.symlinks++;
        } catch (err) {
          this.problem(e.abs, err);
        }
      } else {
        const reused = this.reuse(e.name, e.st, prev);
        if (reused) {
          nodes[i] = reused;
          continue;
        }
        const key = e.st.linked ? `${e.st.linked.dev}:${e.st.ino}` : undefined;
        const first = key === undefined ? undefined : this.linked.get(key);
        if (first && sameStat(first.st, e.st)) {
          // Another path of a file this snapshot reads already: its chunks, once that read ends.
          if (--first.pathsLeft === 0) this.linked.delete(key!);
          track(first.node.then((n) => (n ? this.linkedNode(e.name, e.st, n) : this.readLarge(e.abs, e.name, e.st))).then((node) => void (nodes[i] = node)));
          continue;
        }
        let read: Promise<Node | undefined>;
        // Small files stay in the batched reader, which does not say which file it read: their
        // other paths are read too. (Registering them made 20,000 linked 4 KiB files 2-3x slower.)
        if (key !== undefined && !first && e.st.size >= BigInt(this.chunker.minSize) && this.linked.size < MAX_LINKED_FILES) {
          // Its other paths take its chunks only if what was read is the file they were listed
          // with, unchanged: not a file renamed over this path since (a checkpoint saved by
          // rename, even one given the freed inode number), nor a read that saw it change.
          const readAs: ReadAs = {};
          const buf = await this.readBuffers.take();
          read = this.archiveLarge(e.abs, e.name, e.st, buf, readAs).finally(() => this.readBuffers.give(buf));
          const st = e.st;
          const node = read.then((n) => (n && readAs.st && readAs.st.ino === st.ino && Number(readAs.st.dev) === st.linked?.dev && sameStat(st, readAs.st) ? n : undefined));
          this.linked.set(key, { st, node, pathsLeft: st.linked!.nlink - 1 });
        } else if (e.st.size < BigInt(this.chunker.minSize)) {
          // Below the minimum chunk size a file is exactly one chunk: read whole, in batches.
          await this.small.room();
          read = this.small.read(e.abs, Number(e.st.size)).then((r) => this.archiveSmall(e.abs, e.name, e.st, r));
        } else {
          const buf = await this.readBuffers.take();
          read = this.archiveLarge(e.abs, e.name, e.st, buf).finally(() => this.readBuffers.give(buf));
        }
        track(read.then((node) => void (nodes[i] = node)));
      }
    }
    this.small.flush();
    const tree = Promise.all(reading).then(() => {
      if (this.failure) throw this.failure.err;
      return this.storeTree(nodes.filter((n): n is Node => n !== undefined), parentTree);
    });
    if (this.dirsFinishing < DIRS_FINISHING_AT_ONCE) {
      this.dirsFinishing++;
      void tree.finally(() => this.dirsFinishing--).catch(() => undefined);
      return { tree };
    }
    await tree.catch(() => undefined);
    return { tree };
  }

  /** The parent's node for an unchanged file (same size, mtime, ctime, inode): nothing is read. */
  private reuse(name: string, st: EntryStat, prev: Node | undefined): Node | undefined {
    const node = metaNode(name, 'FILE', st);
    if (!prev || prev.type !== 'FILE' || prev.size !== node.size || prev.mtimeNs !== node.mtimeNs || prev.ctimeNs !== node.ctimeNs || prev.inode !== node.inode) return undefined;
    node.chunks = prev.chunks;
    this.stats.files++;
    this.stats.filesReused++;
    this.stats.bytes += Number(st.size);
    this.stats.bytesReused += Number(st.size);
    this.onProgress(this.stats);
    return node;
  }

  /** A later path of a hard-linked file whose first path was read: the same chunks, nothing read. */
  private linkedNode(name: string, st: EntryStat, read: Node): Node {
    const node = metaNode(name, 'FILE', st);
    node.chunks = read.chunks;
    node.size = read.size;
    this.stats.files++;
    this.stats.bytes += Number(read.size);
    this.onProgress(this.stats);
    return node;
  }

  private async readLarge(abs: string, name: string, st: EntryStat): Promise<Node | undefined> {
    const buf = await this.readBuffers.take();
    try {
      return await this.archiveLarge(abs, name, st, buf);
    } finally {
      this.readBuffers.give(buf);
    }
  }

  private async archiveSmall(abs: string, name: string, st: EntryStat, r: SmallFile): Promise<Node | undefined> {
    if (r.kind === 'error') {
      this.problem(abs, r.error);
      return undefined;
    }
    if (r.kind === 'grew') return this.readLarge(abs, name, st);
    const node = metaNode(name, 'FILE', st);
    try {
      if (r.rawLength > 0) {
        node.chunks.push(r.id);
        this.stats.bytesRead += r.rawLength;
        await this.sink.offerPacked(r.id, r.data, r.rawLength, r.compressed);
      }
    } finally {
      r.done();
    }
    // A file that changed while we read it is recorded as what we read.
    node.size = String(r.rawLength);
    this.stats.files++;
    this.stats.bytes += r.rawLength;
    this.onProgress(this.stats);
    return node;
  }

  private async archiveLarge(abs: string, name: string, st: EntryStat, buf: Buffer, readAs?: ReadAs): Promise<Node | undefined> {
    const node = metaNode(name, 'FILE', st);
    try {
      const size = await this.readStreaming(abs, node, buf, readAs);
      node.size = String(size);
      this.stats.files++;
      this.stats.bytes += size;
      return node;
    } catch (err) {
      this.problem(abs, err);
      return undefined;
    }
  }

  /**
   * Reads a file whole. One written while it was read (a checkpoint being saved) would be
   * recorded as a mix of old and new bytes that never existed on disk: a change seen in its
   * size, mtime or ctime after the read (the ctime catches a rewrite that put the mtime back,
   * as cp -p does) makes it read once more, from the same open file, and a second change is
   * reported (exit 3) with what the second read got. A file deleted or linked meanwhile is the
   * same inode still open: its second read is whole. The next snapshot reads it again anyway.
   */
  private async readStreaming(abs: string, node: Node, buf: Buffer, readAs?: ReadAs): Promise<number> {
    const fh = await fs.open(abs, READ_REGULAR_FLAGS);
    try {
      let before = await fh.stat({ bigint: true });
      if (!before.isFile()) throw noLongerRegular(abs);
      for (let attempt = 1; ; attempt++) {
        node.chunks = [];
        let size = 0;
        for await (const chunk of chunkViews(fh, this.chunker, undefined, buf)) {
          size += chunk.length;
          await this.offerChunk(chunk, node);
        }
        const after = await fh.stat({ bigint: true });
        if (after.size === before.size && after.mtimeNs === before.mtimeNs && after.ctimeNs === before.ctimeNs) {
          if (readAs) readAs.st = after;
          return size;
        }
        if (attempt === 2) {
          this.problem(abs, Object.assign(new Error('changed while it was read, twice: the snapshot holds the second read, which may mix old and new contents'), { code: 'ECHANGED' }));
          return size;
        }
        before = after;
      }
    } finally {
      await fh.close();
    }
  }

  private async offerChunk(chunk: Buffer, node: Node): Promise<void> {
    const id = hash(chunk);
    node.chunks.push(id);
    this.stats.bytesRead += chunk.length;
    await this.sink.offer(id, chunk, 'DATA');
    this.onProgress(this.stats);
  }

  /**
   * A tree equal to the parent snapshot's tree at the same path is not offered: the server
   * has it, and the session pinned the parent's root, so prune keeps everything below it. An
   * unchanged walk then asks the server about nothing.
   */
  private async storeTree(nodes: Node[], parentTree: Buffer | undefined): Promise<Buffer> {
    const data = encodeTree(nodes);
    const id = hash(data);
    await this.trees.made(id, data);
    if (!parentTree?.equals(id)) await this.sink.offer(id, data, 'TREE');
    return id;
  }
}

/** The stat of the file whose bytes a read got, when the file did not change while it was read. */
interface ReadAs {
  st?: { ino: bigint; dev: bigint; size: bigint; mtimeNs: bigint; ctimeNs: bigint };
}

/** The same size and times: one file, unchanged between two stats of its inode. */
function sameStat(a: Pick<EntryStat, 'size' | 'mtimeNs' | 'ctimeNs'>, b: Pick<EntryStat, 'size' | 'mtimeNs' | 'ctimeNs'>): boolean {
  return a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs;
}

function metaNode(name: string, type: Node['type'], st: EntryStat): Node {
  const node = emptyNode(name, type);
  node.mode = Number(st.mode & 0o7777n);
  node.mtimeNs = String(st.mtimeNs);
  node.ctimeNs = String(st.ctimeNs);
  node.inode = String(st.ino);
  node.size = type === 'DIR' ? '0' : String(st.size);
  if (type === 'FILE' && st.linked) node.links = st.linked.nlink;
  return node;
}

function dirNode(name: string, st: EntryStat, subtree: Buffer): Node {
  const node = metaNode(name, 'DIR', st);
  // A directory's ctime and inode change with every entry added or removed; leaving them
  // out keeps an unchanged directory's tree bytes, and so its id, stable across snapshots.
  node.ctimeNs = '0';
  node.inode = '0';
  node.subtree = subtree;
  return node;
}

import { promises as fs, type BigIntStats } from 'node:fs';
import path from 'node:path';
import { Chunker } from '../common/chunker.js';
import { readChunks } from '../common/chunk-reader.js';
import { hash } from '../common/hash.js';
import type { Node } from '../common/messages.js';
import { compareNames, emptyNode, encodeTree } from '../common/tree.js';
import { ownedBuffer } from '../common/compression.js';
import type { ExcludeMatcher } from './excludes.js';
import { DirReader, rootRel } from './scan.js';

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

/** Where chunks and trees go: the uploader in a real run, a FindMissing counter in a dry run. */
export interface BlobSink {
  offer(id: Buffer, raw: Buffer, kind: 'DATA' | 'TREE'): Promise<void>;
}

export type ParentTreeReader = (id: Buffer) => Promise<Node[]>;

/**
 * Walks directories depth first, turns each into a tree blob (entries sorted by name), and
 * reuses the chunk list of every file whose size, mtime, ctime and inode match the parent
 * snapshot, so an unchanged file is never opened and an unchanged directory produces the
 * same tree id.
 */
export class Archiver {
  readonly stats: ArchiveStats = { files: 0, dirs: 0, symlinks: 0, bytes: 0, bytesRead: 0, filesReused: 0, bytesReused: 0, errors: 0, skipped: 0 };
  readonly problems: ArchiveProblem[] = [];
  private readonly reader: DirReader;

  constructor(
    private readonly chunker: Chunker,
    private readonly sink: BlobSink,
    excludes: ExcludeMatcher,
    private readonly readParentTree: ParentTreeReader,
    private readonly onProgress: (stats: ArchiveStats) => void = () => undefined,
    signal?: AbortSignal,
  ) {
    this.reader = new DirReader(excludes, { problem: (p, err) => this.problem(p, err), skipped: () => this.stats.skipped++ }, signal);
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
    if (roots.length === 1) return this.archiveDir(roots[0], '', parentRoot, true);
    const parentNodes = parentRoot ? await this.parentMap(parentRoot) : new Map<string, Node>();
    const nodes: Node[] = [];
    for (const root of [...roots].sort((a, b) => compareNames(path.basename(a), path.basename(b)))) {
      const name = rootRel(roots, root);
      const st = await fs.stat(root, { bigint: true });
      const prev = parentNodes.get(name);
      const subtree = await this.archiveDir(root, name, prev?.type === 'DIR' ? prev.subtree : undefined, true);
      nodes.push(dirNode(name, st, subtree));
    }
    return this.storeTree(nodes);
  }

  private async parentMap(treeId: Buffer): Promise<Map<string, Node>> {
    try {
      return new Map((await this.readParentTree(treeId)).map((n) => [n.name, n]));
    } catch {
      // An unreadable parent only costs re-reading: every file is then treated as changed.
      return new Map();
    }
  }

  private async archiveDir(abs: string, rel: string, parentTree: Buffer | undefined, isRoot: boolean): Promise<Buffer> {
    this.stats.dirs++;
    const parentNodes = parentTree ? await this.parentMap(parentTree) : new Map<string, Node>();
    const nodes: Node[] = [];
    for (const e of await this.reader.entries(abs, rel, isRoot)) {
      const prev = parentNodes.get(e.name);
      if (e.type === 'DIR') {
        const subtree = await this.archiveDir(e.abs, e.rel, prev?.type === 'DIR' ? prev.subtree : undefined, false);
        nodes.push(dirNode(e.name, e.st, subtree));
      } else if (e.type === 'SYMLINK') {
        try {
          const node = metaNode(e.name, 'SYMLINK', e.st);
          node.target = await fs.readlink(e.abs);
          nodes.push(node);
          this.stats.symlinks++;
        } catch (err) {
          this.problem(e.abs, err);
        }
      } else {
        const node = await this.archiveFile(e.abs, e.name, e.st, prev);
        if (node) nodes.push(node);
      }
    }
    return this.storeTree(nodes);
  }

  private async archiveFile(abs: string, name: string, st: BigIntStats, prev: Node | undefined): Promise<Node | undefined> {
    const node = metaNode(name, 'FILE', st);
    if (prev && prev.type === 'FILE' && prev.size === node.size && prev.mtimeNs === node.mtimeNs && prev.ctimeNs === node.ctimeNs && prev.inode === node.inode) {
      node.chunks = prev.chunks;
      this.stats.files++;
      this.stats.filesReused++;
      this.stats.bytes += Number(st.size);
      this.stats.bytesReused += Number(st.size);
      this.onProgress(this.stats);
      return node;
    }
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(abs, 'r');
    } catch (err) {
      this.problem(abs, err);
      return undefined;
    }
    try {
      let size = 0;
      for await (const chunk of readChunks(fh, this.chunker)) {
        const id = hash(chunk);
        node.chunks.push(id);
        size += chunk.length;
        this.stats.bytesRead += chunk.length;
        await this.sink.offer(id, chunk, 'DATA');
        this.onProgress(this.stats);
      }
      // A file that changed while we read it is recorded as what we read.
      node.size = String(size);
      this.stats.files++;
      this.stats.bytes += size;
      return node;
    } catch (err) {
      this.problem(abs, err);
      return undefined;
    } finally {
      await fh.close();
    }
  }

  private async storeTree(nodes: Node[]): Promise<Buffer> {
    const data = encodeTree(nodes);
    const id = hash(data);
    await this.sink.offer(id, ownedBuffer(data), 'TREE');
    return id;
  }
}

function metaNode(name: string, type: Node['type'], st: BigIntStats): Node {
  const node = emptyNode(name, type);
  node.mode = Number(st.mode & 0o7777n);
  node.mtimeNs = String(st.mtimeNs);
  node.ctimeNs = String(st.ctimeNs);
  node.inode = String(st.ino);
  node.size = type === 'DIR' ? '0' : String(st.size);
  return node;
}

function dirNode(name: string, st: BigIntStats, subtree: Buffer): Node {
  const node = metaNode(name, 'DIR', st);
  // A directory's ctime and inode change with every entry added or removed; leaving them
  // out keeps an unchanged directory's tree bytes, and so its id, stable across snapshots.
  node.ctimeNs = '0';
  node.inode = '0';
  node.subtree = subtree;
  return node;
}

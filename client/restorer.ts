import { randomBytes } from 'node:crypto';
import { constants, promises as fs } from 'node:fs';
import path from 'node:path';
import picomatch from 'picomatch';
import { Chunker } from '../common/chunker.js';
import { readChunks } from '../common/chunk-reader.js';
import { CairnError, Code, dataLoss, invalidArgument } from '../common/errors.js';
import { hash, toHex } from '../common/hash.js';
import type { HelloReply, Node, Snapshot } from '../common/messages.js';
import { badName, MAX_TREE_ENTRIES, validateNodes } from '../common/tree.js';
import { ChunkFetcher } from './chunk-fetcher.js';
import type { Connection } from './connection.js';

export type OverwriteMode = 'never' | 'if-newer' | 'always';

export interface RestoreOptions {
  target: string;
  overwrite: OverwriteMode;
  includes: string[];
  dryRun: boolean;
  /** Skip (and report) symlinks whose target is absolute or climbs out of the target. */
  confineSymlinks?: boolean;
  concurrency?: number;
  onProgress?: (stats: RestoreStats) => void;
}

export interface RestoreStats {
  files: number;
  dirs: number;
  symlinks: number;
  bytes: number;
  filesSkippedSame: number;
  filesKeptLocal: number;
  filesOverwritten: number;
}

export interface PlannedConflict {
  path: string;
  reason: string;
}

interface DirToFinish {
  abs: string;
  node: Node;
}

interface LinkToMake {
  abs: string;
  node: Node;
  /** Directories between the target and the link. */
  depth: number;
}

/**
 * Why a symlink `depth` directories below the restore target may point outside it, or
 * undefined. A relative target is confined when all its `..` lead and do not outnumber the
 * directories above the link: a `..` after a name could climb out through another link.
 */
export function escapingSymlink(target: string, depth: number): string | undefined {
  if (target.startsWith('/')) return `its target ${JSON.stringify(target)} is absolute`;
  let up = 0;
  let down = 0;
  for (const part of target.split('/')) {
    if (part === '' || part === '.') continue;
    if (part !== '..') down++;
    else if (down > 0) return `its target ${JSON.stringify(target)} climbs with '..' after a name, which a link on the way could send anywhere`;
    else up++;
  }
  return up > depth ? `its target ${JSON.stringify(target)} climbs above the restore target` : undefined;
}

/**
 * Writes a snapshot's tree under a target directory. Every tree is checked again here as the
 * server checks it on upload (a hostile or corrupt server must not steer a write outside the
 * target); directories are created one component at a time, never through a link; files are
 * written to a temporary name and renamed into place; symlinks are made only after every
 * file, so no write of this restore can pass through one; modes and times are set last.
 */
export class Restorer {
  readonly stats: RestoreStats = { files: 0, dirs: 0, symlinks: 0, bytes: 0, filesSkippedSame: 0, filesKeptLocal: 0, filesOverwritten: 0 };
  readonly conflicts: PlannedConflict[] = [];
  /** Symlinks not made because of confineSymlinks. */
  readonly refused: PlannedConflict[] = [];
  private readonly fetcher: ChunkFetcher;
  private readonly chunker: Chunker;
  private readonly target: string;
  private readonly include: ((p: string) => boolean) | undefined;
  private readonly dirs: DirToFinish[] = [];
  private readonly links: LinkToMake[] = [];
  private readonly ensured = new Set<string>();
  private running = new Set<Promise<void>>();
  private failure: unknown;

  constructor(
    private readonly conn: Connection,
    hello: HelloReply,
    private readonly opts: RestoreOptions,
  ) {
    this.fetcher = new ChunkFetcher(conn);
    this.chunker = new Chunker(hello.chunker);
    this.target = path.resolve(opts.target);
    this.include = opts.includes.length > 0 ? picomatch(opts.includes, { dot: true }) : undefined;
  }

  async restore(snapshot: Snapshot): Promise<RestoreStats> {
    if (!this.opts.dryRun) await this.ensureDir(this.target);
    await this.restoreDir(Buffer.from(snapshot.rootTree, 'hex'), this.target, '', false);
    while (this.running.size > 0) await Promise.all([...this.running]);
    if (this.failure) throw this.failure;
    for (const l of this.links) await this.restoreSymlink(l);
    if (!this.opts.dryRun) {
      for (const d of this.dirs.reverse()) await applyMeta(d.abs, d.node, false);
    }
    return this.stats;
  }

  /** A name from the snapshot, joined under `dir`, or an error: never a path outside the target. */
  private child(dir: string, name: string): string {
    const bad = badName(name);
    if (bad) throw dataLoss(`refusing to restore entry in ${dir}: ${bad}`);
    const p = path.join(dir, name);
    if (path.dirname(p) !== dir || !p.startsWith(this.target + path.sep)) throw dataLoss(`refusing to restore ${JSON.stringify(name)}: it would land outside ${this.target}`);
    return p;
  }

  private wanted(rel: string, underIncluded: boolean): boolean {
    return !this.include || underIncluded || this.include(rel);
  }

  /** A directory's entries, held to the rules the server applies on upload: sorted, unique, safe names. */
  private async readTree(id: Buffer, rel: string): Promise<Node[]> {
    const what = `directory /${rel} (tree ${toHex(id)})`;
    const nodes: Node[] = [];
    for await (const msg of this.conn.stream<{ nodes: Node[] }>('ReadTree', { id })) {
      nodes.push(...msg.nodes);
      if (nodes.length > MAX_TREE_ENTRIES) throw dataLoss(`${what}: the server sent more than ${MAX_TREE_ENTRIES} entries; refusing to restore it`);
    }
    validateNodes(nodes, `refusing to restore ${what}`, Code.DATA_LOSS);
    return nodes;
  }

  private async restoreDir(treeId: Buffer, abs: string, rel: string, underIncluded: boolean): Promise<void> {
    const nodes = await this.readTree(treeId, rel);
    for (const node of nodes) {
      if (this.failure) throw this.failure;
      const childAbs = this.child(abs, node.name);
      const childRel = rel === '' ? node.name : `${rel}/${node.name}`;
      const included = this.wanted(childRel, underIncluded);
      if (node.type === 'DIR') {
        if (included && !this.opts.dryRun) {
          await this.ensureDir(childAbs);
          this.dirs.push({ abs: childAbs, node });
        }
        if (included) this.stats.dirs++;
        await this.restoreDir(node.subtree, childAbs, childRel, included && this.include !== undefined);
      } else if (!included) {
        continue;
      } else if (node.type === 'SYMLINK') {
        if (node.target === '' || node.target.includes('\0')) throw dataLoss(`refusing symlink ${childAbs}: its target is empty or contains NUL`);
        this.links.push({ abs: childAbs, node, depth: rel === '' ? 0 : rel.split('/').length });
      } else {
        if (!this.opts.dryRun) await this.ensureDir(abs);
        await this.schedule(() => this.restoreFile(childAbs, node));
      }
    }
  }

  private async schedule(job: () => Promise<void>): Promise<void> {
    while (this.running.size >= (this.opts.concurrency ?? 4)) await Promise.race([...this.running]);
    const p: Promise<void> = job()
      .catch((err) => {
        this.failure ??= err;
      })
      .finally(() => this.running.delete(p));
    this.running.add(p);
  }

  /**
   * Creates a directory and any missing parents below the target one component at a time,
   * refusing any component that is not a real directory: `mkdir -p` would follow a symlink
   * already standing anywhere on the way. The target itself is the user's choice and may be one.
   */
  private async ensureDir(abs: string): Promise<void> {
    if (this.ensured.has(abs)) return;
    const isTarget = abs === this.target;
    if (!isTarget) {
      if (!abs.startsWith(this.target + path.sep)) throw dataLoss(`refusing to create ${abs}: it is outside ${this.target}`);
      await this.ensureDir(path.dirname(abs));
    }
    const st = await (isTarget ? fs.stat(abs) : fs.lstat(abs)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
      return undefined;
    });
    if (!st) await fs.mkdir(abs, { recursive: isTarget });
    else if (!st.isDirectory()) throw new CairnError(Code.FAILED_PRECONDITION, `${abs} exists and is not a directory; refusing to restore through it`);
    this.ensured.add(abs);
  }

  private async restoreSymlink({ abs, node, depth }: LinkToMake): Promise<void> {
    const escapes = escapingSymlink(node.target, depth);
    if (escapes && this.opts.confineSymlinks) {
      this.refused.push({ path: abs, reason: `symlink not restored: ${escapes}` });
      return;
    }
    this.stats.symlinks++;
    if (this.opts.dryRun) return;
    await this.ensureDir(path.dirname(abs));
    const existing = await fs.lstat(abs).catch(() => undefined);
    if (existing) {
      if (existing.isSymbolicLink() && (await fs.readlink(abs)) === node.target) return;
      if (this.opts.overwrite !== 'always') {
        this.conflicts.push({ path: abs, reason: 'exists locally and differs from the snapshot' });
        this.stats.filesKeptLocal++;
        return;
      }
      await fs.rm(abs, { recursive: existing.isDirectory(), force: true });
    }
    await fs.symlink(node.target, abs);
    await applyMeta(abs, node, true);
  }

  /** What to do with a file that already exists at the destination. */
  private async decide(abs: string, node: Node): Promise<'write' | 'skip-same' | 'keep-local'> {
    const st = await fs.lstat(abs, { bigint: true }).catch(() => undefined);
    if (!st) return 'write';
    if (st.isFile() && st.size === BigInt(node.size) && (await this.sameContent(abs, node))) return 'skip-same';
    if (this.opts.overwrite === 'always') return 'write';
    if (this.opts.overwrite === 'if-newer' && BigInt(node.mtimeNs) > st.mtimeNs) return 'write';
    return 'keep-local';
  }

  /** Resume: a file already holding the snapshot's bytes (same chunks by hash) is not fetched again. */
  private async sameContent(abs: string, node: Node): Promise<boolean> {
    const fh = await fs.open(abs, 'r');
    try {
      let i = 0;
      for await (const chunk of readChunks(fh, this.chunker)) {
        if (i >= node.chunks.length || !hash(chunk).equals(node.chunks[i])) return false;
        i++;
      }
      return i === node.chunks.length;
    } finally {
      await fh.close();
    }
  }

  private async restoreFile(abs: string, node: Node): Promise<void> {
    const decision = await this.decide(abs, node);
    if (decision === 'skip-same') {
      this.stats.filesSkippedSame++;
      this.stats.files++;
      if (!this.opts.dryRun) await applyMeta(abs, node, false);
      return;
    }
    if (decision === 'keep-local') {
      this.conflicts.push({ path: abs, reason: this.opts.overwrite === 'if-newer' ? 'local file is newer than the snapshot' : 'exists locally and differs from the snapshot' });
      this.stats.filesKeptLocal++;
      return;
    }
    const exists = await fs.lstat(abs).then(() => true, () => false);
    if (exists) this.stats.filesOverwritten++;
    this.stats.files++;
    if (this.opts.dryRun) {
      this.stats.bytes += Number(node.size);
      return;
    }
    const tmp = path.join(path.dirname(abs), `.${path.basename(abs).slice(0, 200)}.cairn-${randomBytes(4).toString('hex')}`);
    // O_EXCL|O_NOFOLLOW: never write through a link someone planted at the temporary name.
    const fh = await fs.open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    let written = 0;
    try {
      const avg = node.chunks.length > 0 ? Math.max(1, Math.ceil(Number(node.size) / node.chunks.length)) : 1;
      for await (const chunk of this.fetcher.chunks(node.chunks, `file ${abs}`, avg)) {
        await fh.write(chunk, 0, chunk.length, written);
        written += chunk.length;
        this.stats.bytes += chunk.length;
        this.opts.onProgress?.(this.stats);
      }
      if (written !== Number(node.size)) throw dataLoss(`file ${abs}: snapshot says ${node.size} bytes, its chunks hold ${written}`);
      await fh.close();
      await applyMeta(tmp, node, false);
      await fs.rename(tmp, abs);
    } catch (err) {
      await fh.close().catch(() => undefined);
      await fs.rm(tmp, { force: true });
      throw err;
    }
  }
}

async function applyMeta(abs: string, node: Node, isLink: boolean): Promise<void> {
  const mtime = Number(BigInt(node.mtimeNs) / 1000n) / 1e6;
  if (isLink) {
    await fs.lutimes(abs, mtime, mtime);
    return;
  }
  // No setuid or setgid: restored files belong to whoever restores, often root, and a snapshot
  // must not be able to hand out a root-owned setuid program.
  await fs.chmod(abs, node.mode & 0o1777);
  await fs.utimes(abs, mtime, mtime);
}

export function parseOverwrite(s: string): OverwriteMode {
  if (s === 'never' || s === 'if-newer' || s === 'always') return s;
  throw invalidArgument(`--overwrite must be never, if-newer or always, got ${JSON.stringify(s)}`);
}

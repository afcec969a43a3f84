import { randomBytes } from 'node:crypto';
import { constants, promises as fs } from 'node:fs';
import path from 'node:path';
import { Chunker } from '../common/chunker.js';
import { chunkViews } from '../common/chunk-reader.js';
import { CairnError, Code, dataLoss, invalidArgument } from '../common/errors.js';
import { compileGlob } from '../common/glob.js';
import { hash, toHex } from '../common/hash.js';
import type { HelloReply, Node, Snapshot } from '../common/messages.js';
import { badName, joinPath } from '../common/tree.js';
import { ChunkFetcher } from './chunk-fetcher.js';
import { FileWriter, type WholeFile } from './file-writer.js';
import { HardLinks, type LocalFile } from './hard-links.js';
import { readTree } from './tree-reader.js';
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
  /** Files restored as a hard link to another path of the same file, as on the source. */
  hardLinks: number;
  /** Paths of a hard-linked file written as separate files: the first path holds a local file that differs or has names of its own, the file system refused the link, or past MAX_TRACKED_LINKS. */
  hardLinksAsCopies: number;
}

export interface PlannedConflict {
  path: string;
  reason: string;
}

interface DirToFinish {
  abs: string;
  node: Node;
}

interface SmallFile {
  abs: string;
  node: Node;
  /** A path of a hard-linked file restored as a file of its own: counted as such if written. */
  copy: boolean;
}

/** Files of at most one chunk and this size are fetched many to one ReadChunks call. */
const SMALL_FILE_BYTES = 1024 * 1024;
const SMALL_BATCH_FILES = 256;
const SMALL_BATCH_BYTES = 8 * 1024 * 1024;

interface HardLinkToMake {
  abs: string;
  node: Node;
  /** The path of the same file restored first. */
  first: string;
}

/** link() errors that mean "not here" (another file system, no hard links, too many): the file is written instead. */
const LINK_REFUSED = new Set(['EXDEV', 'EPERM', 'ENOTSUP', 'EMLINK']);

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
  readonly stats: RestoreStats = { files: 0, dirs: 0, symlinks: 0, bytes: 0, filesSkippedSame: 0, filesKeptLocal: 0, filesOverwritten: 0, hardLinks: 0, hardLinksAsCopies: 0 };
  readonly conflicts: PlannedConflict[] = [];
  /** Symlinks not made because of confineSymlinks. */
  readonly refused: PlannedConflict[] = [];
  private readonly fetcher: ChunkFetcher;
  private readonly writer = new FileWriter();
  private readonly chunker: Chunker;
  private readonly target: string;
  private readonly include: ((p: string) => boolean) | undefined;
  private readonly matched: boolean[] = [];
  private readonly dirs: DirToFinish[] = [];
  private readonly links: LinkToMake[] = [];
  private readonly hardLinks = new HardLinks();
  private readonly hardLinksToMake: HardLinkToMake[] = [];
  private readonly ensured = new Set<string>();
  /** Files or links standing where a directory goes, already reported. */
  private readonly blocked = new Set<string>();
  /** A directory of the snapshot was not gone into: its paths were not matched against --include. */
  private blockedBelow = false;
  /** Directories this restore made: nothing can already stand in them, so no file there needs a look first. */
  private readonly created = new Set<string>();
  private small: SmallFile[] = [];
  private smallBytes = 0;
  private running = new Set<Promise<void>>();
  private failure: unknown;

  constructor(
    private readonly conn: Connection,
    hello: HelloReply,
    private readonly opts: RestoreOptions,
  ) {
    this.fetcher = new ChunkFetcher(conn, { maxChunk: hello.chunker.maxSize });
    this.chunker = new Chunker(hello.chunker);
    this.target = path.resolve(opts.target);
    const globs = opts.includes.map((g) => compileGlob(g));
    this.include =
      globs.length > 0
        ? (p) => {
            let hit = false;
            globs.forEach((g, i) => {
              if (g.matches(p)) hit = this.matched[i] = true;
            });
            return hit;
          }
        : undefined;
  }

  async restore(snapshot: Snapshot): Promise<RestoreStats> {
    try {
      return await this.restoreAll(snapshot);
    } finally {
      await this.writer.close();
    }
  }

  private async restoreAll(snapshot: Snapshot): Promise<RestoreStats> {
    if (!this.opts.dryRun) await this.ensureDir(this.target);
    await this.restoreDir(Buffer.from(snapshot.rootTree, 'hex'), this.target, '', false);
    await this.flushSmall();
    await this.drain();
    // Every first path is in place now; links go in before the symlinks, as every write does.
    // A first path found identical with other names is linked to only if those names are all
    // its own later paths (an earlier restore's links), looked at before any link is made.
    await this.hardLinks.settleShared(this.hardLinksToMake, async (abs, local) => {
      const st = await fs.lstat(abs, { bigint: true }).catch(() => undefined);
      return st !== undefined && st.dev === local.dev && st.ino === local.ino;
    });
    for (const l of this.hardLinksToMake) await this.restoreHardLink(l);
    await this.drain();
    for (const l of this.links) await this.restoreSymlink(l);
    if (!this.opts.dryRun) {
      for (const d of this.dirs.reverse()) await applyMeta(d.abs, d.node, false);
    }
    return this.stats;
  }

  /**
   * The --include patterns no path of the snapshot matched: a typo restores nothing, and says
   * so. Not known when a conflict kept the restore out of a directory.
   */
  unmatchedIncludes(): string[] {
    return this.blockedBelow ? [] : this.opts.includes.filter((_, i) => !this.matched[i]);
  }

  /** A name from the snapshot, joined under `dir`, or an error: never a path outside the target. */
  private child(dir: string, name: string): string {
    const bad = badName(name);
    if (bad) throw dataLoss(`refusing to restore entry in ${dir}: ${bad}`);
    const p = path.join(dir, name);
    if (path.dirname(p) !== dir || !p.startsWith(this.target + path.sep)) throw dataLoss(`refusing to restore ${JSON.stringify(name)}: it would land outside ${this.target}`);
    return p;
  }

  /** Every pattern is tried on every path, below an included directory too, so unmatchedIncludes knows each one's fate. */
  private wanted(rel: string, underIncluded: boolean): boolean {
    if (!this.include) return true;
    return this.include(rel) || underIncluded;
  }

  private async restoreDir(treeId: Buffer, abs: string, rel: string, underIncluded: boolean): Promise<void> {
    const nodes = await readTree(this.conn, treeId, `refusing to restore directory /${rel} (tree ${toHex(treeId)})`);
    for (const node of nodes) {
      if (this.failure) throw this.failure;
      const childAbs = this.child(abs, node.name);
      const childRel = joinPath(rel, node.name);
      const included = this.wanted(childRel, underIncluded);
      if (node.type === 'DIR') {
        if (included && !((await this.dirStands(abs)) && (await this.makeWayForDir(childAbs)) && (await this.dirStands(childAbs)))) {
          this.blockedBelow = true;
          continue;
        }
        // dirStands made it (outside a dry run); its mode and times are set at the end.
        if (included && !this.opts.dryRun) this.dirs.push({ abs: childAbs, node });
        if (included) this.stats.dirs++;
        await this.restoreDir(node.subtree, childAbs, childRel, included && this.include !== undefined);
      } else if (!included) {
        continue;
      } else if (node.type === 'SYMLINK') {
        if (node.target === '' || node.target.includes('\0')) throw dataLoss(`refusing symlink ${childAbs}: its target is empty or contains NUL`);
        this.links.push({ abs: childAbs, node, depth: rel === '' ? 0 : rel.split('/').length });
      } else {
        if (!(await this.dirStands(abs))) continue;
        const link = this.hardLinks.linkOf(childAbs, node);
        if (typeof link === 'object') {
          this.hardLinksToMake.push({ abs: childAbs, node, first: link.linkTo });
          continue;
        }
        const copy = link === 'copy';
        if (node.chunks.length <= 1 && Number(node.size) <= SMALL_FILE_BYTES) {
          this.small.push({ abs: childAbs, node, copy });
          this.smallBytes += Number(node.size);
          if (this.small.length >= SMALL_BATCH_FILES || this.smallBytes >= SMALL_BATCH_BYTES) await this.flushSmall();
        } else {
          await this.schedule(() => this.restoreFile(childAbs, node, copy));
        }
      }
    }
  }

  private async drain(): Promise<void> {
    while (this.running.size > 0) await Promise.all([...this.running]);
    if (this.failure) throw this.failure;
  }

  private async schedule(job: () => Promise<void>): Promise<void> {
    while (this.running.size >= (this.opts.concurrency ?? 4)) await Promise.race([...this.running]);
    if (this.failure) throw this.failure;
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
    if (!st) {
      await fs.mkdir(abs, { recursive: isTarget });
      this.created.add(abs);
    } else if (!st.isDirectory()) {
      throw new NotADirectory(abs);
    } else if (!this.opts.dryRun) {
      await removeLeftovers(abs);
    }
    this.ensured.add(abs);
  }

  /**
   * Whether `dir` is, or can be made, a real directory without going through anything else
   * (made, outside a dry run). A file or link on the way is the user's: one conflict for it,
   * and nothing restored below it. (With --include its ancestors are nobody's choice: they
   * are checked here before anything below them is looked at, let alone removed.)
   */
  private async dirStands(dir: string): Promise<boolean> {
    try {
      if (!this.opts.dryRun) await this.ensureDir(dir);
      else await this.lookThrough(dir);
      return true;
    } catch (err) {
      if (!(err instanceof NotADirectory)) throw err;
      this.keepInTheWay(err.path);
      return false;
    }
  }

  /**
   * ensureDir's checks without making anything, for a dry run: a directory the real run would
   * make (missing, or below one it makes) counts as created, so nothing below it is looked at
   * (through a link the real run removes first, say).
   */
  private async lookThrough(dir: string): Promise<void> {
    if (dir === this.target || this.ensured.has(dir)) return;
    const parent = path.dirname(dir);
    await this.lookThrough(parent);
    const st = this.created.has(parent) ? undefined : await fs.lstat(dir).catch(() => undefined);
    if (st && !st.isDirectory()) throw new NotADirectory(dir);
    if (!st) this.created.add(dir);
    this.ensured.add(dir);
  }

  /**
   * Whether a directory of the snapshot can stand at `abs`. A file or a link there is the
   * user's: kept, with nothing restored below it, unless --overwrite always, which removes it
   * (the entry itself, never what a link points to). It had failed the whole restore half way.
   */
  private async makeWayForDir(abs: string): Promise<boolean> {
    if (this.created.has(path.dirname(abs))) return true;
    const st = await fs.lstat(abs).catch(() => undefined);
    if (!st || st.isDirectory()) return true;
    if (this.opts.overwrite === 'always') {
      if (!this.opts.dryRun) await fs.rm(abs);
      else {
        // As the real run will have made it: new, so nothing below it is looked at (through a link still standing).
        this.ensured.add(abs);
        this.created.add(abs);
      }
      return true;
    }
    this.keepInTheWay(abs);
    return false;
  }

  /** A file or link kept where a directory of the snapshot goes: one conflict, however many entries lie below. */
  private keepInTheWay(abs: string): void {
    if (this.blocked.has(abs)) return;
    this.blocked.add(abs);
    this.conflicts.push({ path: abs, reason: 'a file or link stands where the snapshot has a directory; kept, and nothing restored below it' });
    this.stats.filesKeptLocal++;
  }

  private async restoreSymlink({ abs, node, depth }: LinkToMake): Promise<void> {
    const escapes = escapingSymlink(node.target, depth);
    if (escapes && this.opts.confineSymlinks) {
      this.refused.push({ path: abs, reason: `symlink not restored: ${escapes}` });
      return;
    }
    const dryRun = this.opts.dryRun;
    if (!(await this.dirStands(path.dirname(abs)))) return;
    this.stats.symlinks++;
    const existing = this.created.has(path.dirname(abs)) ? undefined : await fs.lstat(abs).catch(() => undefined);
    if (existing) {
      if (existing.isSymbolicLink() && (await fs.readlink(abs)) === node.target) return;
      if (this.opts.overwrite !== 'always') {
        this.conflicts.push({ path: abs, reason: 'exists locally and differs from the snapshot' });
        this.stats.filesKeptLocal++;
        return;
      }
      // Never a recursive delete: a local directory where the snapshot has a link may hold
      // work no snapshot has. Only an empty one makes way; a dry run reports the same.
      const gone = existing.isDirectory()
        ? await (dryRun ? fs.readdir(abs).then((entries) => entries.length === 0) : fs.rmdir(abs).then(() => true)).catch(() => false)
        : dryRun || (await fs.rm(abs, { force: true }).then(() => true));
      if (!gone) {
        this.conflicts.push({ path: abs, reason: 'a directory that is not empty stands where the snapshot has a symlink; kept' });
        this.stats.filesKeptLocal++;
        return;
      }
    }
    if (dryRun) return;
    await fs.symlink(node.target, abs);
    await applyMeta(abs, node, true);
  }

  /** What to do about the destination of a file, and whether something stands there now. */
  private async decide(abs: string, node: Node): Promise<{ action: 'write' | 'skip-same' | 'keep-local'; exists: boolean; why?: string; local?: LocalFile }> {
    if (this.created.has(path.dirname(abs))) return { action: 'write', exists: false };
    const st = await fs.lstat(abs, { bigint: true }).catch(() => undefined);
    if (!st) return { action: 'write', exists: false };
    // No mode deletes a directory: the rename into place would fail and stop the whole restore.
    if (st.isDirectory()) return { action: 'keep-local', exists: true, why: 'a directory stands where the snapshot has a file; kept' };
    if (st.isFile() && st.size === BigInt(node.size) && (await this.sameContent(abs, node))) return { action: 'skip-same', exists: true, local: { dev: st.dev, ino: st.ino, nlink: st.nlink } };
    if (this.opts.overwrite === 'always') return { action: 'write', exists: true };
    if (this.opts.overwrite === 'if-newer' && BigInt(node.mtimeNs) > st.mtimeNs) return { action: 'write', exists: true };
    return { action: 'keep-local', exists: true };
  }

  /** Resume: a file already holding the snapshot's bytes (same chunks by hash) is not fetched again. */
  private async sameContent(abs: string, node: Node): Promise<boolean> {
    // A one-chunk file (the size was checked equal) is hashed whole: chunkViews would take an
    // 8 MiB read buffer for each of the hundreds of small files a batch decides at once.
    if (node.chunks.length <= 1) {
      const data = await fs.readFile(abs);
      return node.chunks.length === 0 ? data.length === 0 : hash(data).equals(node.chunks[0]);
    }
    const fh = await fs.open(abs, 'r');
    try {
      let i = 0;
      for await (const chunk of chunkViews(fh, this.chunker)) {
        if (i >= node.chunks.length || !hash(chunk).equals(node.chunks[i])) return false;
        i++;
      }
      return i === node.chunks.length;
    } finally {
      await fh.close();
    }
  }

  /** Small files: their decisions, then one ReadChunks call for all of them, then the writes. */
  private async flushSmall(): Promise<void> {
    if (this.small.length === 0) return;
    const batch = this.small;
    this.small = [];
    this.smallBytes = 0;
    await this.schedule(async () => {
      const toWrite = (await Promise.all(batch.map(async (f) => ((await this.settleCopy(f.abs, f.node, f.copy)) === 'write' ? f : undefined)))).filter((f): f is SmallFile => f !== undefined);
      const withData = toWrite.filter((f) => f.node.chunks.length === 1);
      const owners = new Map(withData.map((f) => [toHex(f.node.chunks[0]), f.abs]));
      const fetched = withData.length > 0 ? await this.fetcher.fetchBatch(withData.map((f) => f.node.chunks[0]), (id) => `file ${owners.get(toHex(id))}`) : undefined;
      try {
        const data = new Map(withData.map((f, i) => [f, fetched!.chunks[i]]));
        const files = toWrite.map((f) => wholeFile(f.abs, f.node, data.get(f) ?? Buffer.alloc(0)));
        await this.writer.write(files);
        for (const f of toWrite) this.hardLinks.restored(f.abs, f.node);
        for (const f of files) this.stats.bytes += f.data.length;
        this.opts.onProgress?.(this.stats);
      } finally {
        fetched?.release();
      }
    });
  }

  private async restoreFile(abs: string, node: Node, copy: boolean): Promise<void> {
    if ((await this.settleCopy(abs, node, copy)) !== 'write') return;
    await this.fetchAndWrite(abs, node);
  }

  /** settle(), counting a path of a hard-linked file that is written as a file of its own. */
  private async settleCopy(abs: string, node: Node, copy: boolean): Promise<'write' | 'would-write' | 'none'> {
    const outcome = await this.settle(abs, node, true);
    if (copy && outcome !== 'none') this.stats.hardLinksAsCopies++;
    return outcome;
  }

  private async fetchAndWrite(abs: string, node: Node): Promise<void> {
    const avg = node.chunks.length > 0 ? Math.max(1, Math.ceil(Number(node.size) / node.chunks.length)) : 1;
    await this.writeFile(abs, node, this.fetcher.chunks(node.chunks, `file ${abs}`, avg));
    this.hardLinks.restored(abs, node);
  }

  /**
   * A later path of a hard-linked file: linked to the first one through a temporary name, so
   * the overwrite rules and the atomic rename apply as to any file. Written as a file of its
   * own when the first path holds a local file that differs or has names of its own (see
   * HardLinks.settleShared), or the file system takes no link.
   */
  private async restoreHardLink({ abs, node, first }: HardLinkToMake): Promise<void> {
    if (!this.hardLinks.isRestored(node)) {
      await this.schedule(() => this.restoreFile(abs, node, true));
      return;
    }
    const outcome = await this.settle(abs, node, false);
    if (outcome === 'would-write') this.stats.hardLinks++;
    if (outcome !== 'write') return;
    const tmp = tempName(abs);
    try {
      await fs.link(first, tmp);
    } catch (err) {
      if (!LINK_REFUSED.has((err as NodeJS.ErrnoException).code ?? '')) throw err;
      this.stats.hardLinksAsCopies++;
      await this.schedule(() => this.fetchAndWrite(abs, node));
      return;
    }
    try {
      await fs.rename(tmp, abs);
    } catch (err) {
      await fs.rm(tmp, { force: true });
      throw err;
    }
    this.stats.hardLinks++;
  }

  /**
   * Applies the overwrite rules to a file and counts the outcome: 'write' when it is to be
   * written now, 'would-write' in a dry run, 'none' when it stays as it is. With `bytes` a dry
   * run counts the file's size as to be written (a hard link writes none).
   */
  private async settle(abs: string, node: Node, bytes: boolean): Promise<'write' | 'would-write' | 'none'> {
    const { action, exists, why, local } = await this.decide(abs, node);
    if (action === 'skip-same') {
      this.stats.filesSkippedSame++;
      this.stats.files++;
      if (!this.opts.dryRun) await applyMeta(abs, node, false);
      if (local?.nlink === 1n) this.hardLinks.restored(abs, node);
      else if (local) this.hardLinks.identicalShared(abs, node, local);
      return 'none';
    }
    if (action === 'keep-local') {
      this.conflicts.push({ path: abs, reason: why ?? (this.opts.overwrite === 'if-newer' ? 'local file is newer than the snapshot' : 'exists locally and differs from the snapshot') });
      this.stats.filesKeptLocal++;
      return 'none';
    }
    if (exists) this.stats.filesOverwritten++;
    this.stats.files++;
    if (this.opts.dryRun) {
      if (bytes) this.stats.bytes += Number(node.size);
      // As the real run will have written it.
      this.hardLinks.restored(abs, node);
      return 'would-write';
    }
    return 'write';
  }

  private async writeFile(abs: string, node: Node, chunks: Iterable<Buffer> | AsyncIterable<Buffer>): Promise<void> {
    const tmp = tempName(abs);
    const fh = await fs.open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    let written = 0;
    try {
      for await (const chunk of chunks) {
        await writeAll(fh, chunk, written);
        written += chunk.length;
        this.stats.bytes += chunk.length;
        this.opts.onProgress?.(this.stats);
      }
      if (written !== Number(node.size)) throw dataLoss(`file ${abs}: snapshot says ${node.size} bytes, its chunks hold ${written}`);
      await applyMetaToHandle(fh, node);
      await fh.close();
      await fs.rename(tmp, abs);
    } catch (err) {
      await fh.close().catch(() => undefined);
      await fs.rm(tmp, { force: true });
      throw err;
    }
  }
}

/**
 * A write may take fewer bytes than given (a disk filling up, a file size limit); the next one
 * then fails with the reason. Counting what was offered instead put truncated files in place.
 */
async function writeAll(fh: fs.FileHandle, data: Buffer, position: number): Promise<void> {
  for (let off = 0; off < data.length; ) {
    const { bytesWritten } = await fh.write(data, off, data.length - off, position + off);
    if (bytesWritten === 0) throw new CairnError(Code.INTERNAL, 'write took no bytes');
    off += bytesWritten;
  }
}

/** A file or link standing where the restore needs a directory: never gone through. */
class NotADirectory extends CairnError {
  constructor(readonly path: string) {
    super(Code.FAILED_PRECONDITION, `${path} exists and is not a directory; refusing to restore through it`);
  }
}

/** A small file as the writer thread takes it, once its size is checked against the snapshot. */
function wholeFile(abs: string, node: Node, data: Buffer): WholeFile {
  if (data.length !== Number(node.size)) throw dataLoss(`file ${abs}: snapshot says ${node.size} bytes, its chunks hold ${data.length}`);
  return { abs, tmp: tempName(abs), mode: restoredMode(node), mtime: mtimeSeconds(node), data };
}

/** Distinctive enough that no file of the user's is taken for one and removed. */
const TEMP_NAME = /^\..*\.cairn-restoring-[0-9a-f]{8}$/;
/** Bytes of the file's name a temporary name keeps: with the dots and suffix, well under 255. */
const TEMP_STEM_BYTES = 200;

/** Temporary files of a restore that was killed before its rename: a resumed restore clears them. */
async function removeLeftovers(dir: string): Promise<void> {
  for (const name of await fs.readdir(dir)) {
    if (TEMP_NAME.test(name)) await fs.rm(path.join(dir, name), { force: true });
  }
}

/** Temporary-name suffixes: a random start per process, then counted. Four random bytes per
 *  file took 4% of the main thread's busy time restoring 20,000 small files. */
let tempSeq = randomBytes(4).readUInt32BE(0);

/** Beside the destination, so the final rename is atomic. It is opened O_EXCL|O_NOFOLLOW: never
 *  through a link someone planted at that name. */
function tempName(abs: string): string {
  tempSeq = (tempSeq + 1) >>> 0;
  return path.join(path.dirname(abs), `.${stemOf(path.basename(abs))}.cairn-restoring-${tempSeq.toString(16).padStart(8, '0')}`);
}

/** The start of a name, whole characters of at most TEMP_STEM_BYTES bytes of UTF-8: names are limited in bytes, not characters. */
function stemOf(name: string): string {
  if (Buffer.byteLength(name) <= TEMP_STEM_BYTES) return name;
  let stem = '';
  let bytes = 0;
  for (const ch of name) {
    bytes += Buffer.byteLength(ch);
    if (bytes > TEMP_STEM_BYTES) break;
    stem += ch;
  }
  return stem;
}

/** No setuid or setgid: restored files belong to whoever restores, often root, and a snapshot
 *  must not be able to hand out a root-owned setuid program. */
function restoredMode(node: Node): number {
  return node.mode & 0o1777;
}

/**
 * Seconds as the double utimes takes. A double near 1.8e9 s resolves ~240 ns and libuv
 * truncates it to nanoseconds, so aiming at the exact microsecond can land just below it
 * (and below a millisecond boundary): aim at the middle of the microsecond instead.
 */
function mtimeSeconds(node: Node): number {
  return (Number(BigInt(node.mtimeNs) / 1000n) + 0.5) / 1e6;
}

async function applyMetaToHandle(fh: fs.FileHandle, node: Node): Promise<void> {
  await fh.chmod(restoredMode(node));
  await fh.utimes(mtimeSeconds(node), mtimeSeconds(node));
}

async function applyMeta(abs: string, node: Node, isLink: boolean): Promise<void> {
  if (isLink) {
    await fs.lutimes(abs, mtimeSeconds(node), mtimeSeconds(node));
    return;
  }
  await fs.chmod(abs, restoredMode(node));
  await fs.utimes(abs, mtimeSeconds(node), mtimeSeconds(node));
}

export function parseOverwrite(s: string): OverwriteMode {
  if (s === 'never' || s === 'if-newer' || s === 'always') return s;
  throw invalidArgument(`--overwrite must be never, if-newer or always, got ${JSON.stringify(s)}`);
}

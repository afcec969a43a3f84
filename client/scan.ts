import { lstatSync, promises as fs, readdirSync, type BigIntStats } from 'node:fs';
import path from 'node:path';
import { CairnError, Code } from '../common/errors.js';
import { ID_BYTES } from '../common/hash.js';
import { formatBytes } from '../common/units.js';
import { compareNames, joinPath, MAX_TREE_BLOB_BYTES, MAX_TREE_ENTRIES } from '../common/tree.js';
import type { ExcludeMatcher } from './excludes.js';
import type { DirListing, DirStamp, WalkCache } from './walk-cache.js';

/** What a snapshot keeps of an entry's lstat. */
export interface EntryStat {
  mode: bigint;
  size: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
  ino: bigint;
  /**
   * A file with more than one hard link: the count, and the device that with the inode names
   * the file. Absent otherwise, so the entries of a huge directory of plain files stay as small
   * as they were (120,000 of them listed within a 64 MB heap).
   */
  linked?: { nlink: number; dev: number };
}

export interface ScanEntry {
  name: string;
  abs: string;
  /** '/'-separated path inside the snapshot, as exclude patterns see it. */
  rel: string;
  st: EntryStat;
  type: 'FILE' | 'DIR' | 'SYMLINK';
}

export interface ScanHooks {
  /** An entry that could not be read; the walk goes on without it. */
  problem(path: string, err: unknown): void;
  /** An entry left out: excluded by a rule, a cache directory, or not a file, dir or symlink. */
  skipped(): void;
}


/**
 * What one directory contributes to a snapshot: its entries sorted by name, lstat'ed, with
 * everything the exclusion rules leave out already dropped. The archiver and the pre-scan
 * both walk through this, so the size a pre-scan measures is the size the snapshot reads.
 */
export class DirReader {
  /**
   * `walked`: the pre-scan records each listing there (`record`), and the snapshot's walk
   * takes them back (`replay`), reporting the same problems and skips as a fresh listing.
   */
  constructor(
    private readonly excludes: ExcludeMatcher,
    private readonly hooks: ScanHooks,
    private readonly signal?: AbortSignal,
    private readonly walked?: { cache: WalkCache; role: 'record' | 'replay' },
  ) {}

  /** `isRoot`: a directory named on the command line, whose unreadability fails the snapshot. */
  async entries(abs: string, rel: string, isRoot: boolean): Promise<ScanEntry[]> {
    if (this.signal?.aborted) throw new CairnError(Code.CANCELLED, 'snapshot interrupted');
    if (this.walked?.role === 'replay') {
      const kept = this.walked.cache.take(abs, rel, dirStamp(abs));
      if (kept) {
        for (const p of kept.problems) this.hooks.problem(p.path, p.err);
        for (let i = 0; i < kept.skipped; i++) this.hooks.skipped();
        return kept.entries;
      }
    }
    // Stamped before listing, so a change while listing makes the walk list it again.
    const stamp = this.walked?.role === 'record' ? dirStamp(abs) : undefined;
    const listing = await this.list(abs, rel, isRoot);
    if (stamp) this.walked!.cache.put(abs, stamp, listing);
    return listing.entries;
  }

  private async list(abs: string, rel: string, isRoot: boolean): Promise<DirListing> {
    const problems: DirListing['problems'] = [];
    let skipped = 0;
    const hooks = {
      problem: (p: string, err: unknown) => {
        problems.push({ path: p, err });
        this.hooks.problem(p, err);
      },
      skipped: () => {
        skipped++;
        this.hooks.skipped();
      },
    };
    let names: string[];
    try {
      // Synchronous like the lstat calls below, for the same reason: awaiting the libuv pool
      // once per directory left the event loop idle for a fifth of an unchanged snapshot's scan.
      names = listNames(abs, hooks.problem);
    } catch (err) {
      if (isRoot) throw err;
      hooks.problem(abs, err);
      return { entries: [], problems, skipped };
    }
    names.sort(compareNames);
    // lstat is a few microseconds of kernel time on a cached tree, while a promise round trip
    // through the libuv pool costs ten times that: a no-change snapshot is mostly lstat calls.
    const stats = names.map((name) => {
      try {
        return entryStat(lstatSync(childPath(abs, name), { bigint: true }));
      } catch (err) {
        hooks.problem(childPath(abs, name), err);
        return undefined;
      }
    });
    const out: ScanEntry[] = [];
    for (let i = 0; i < names.length; i++) {
      const s = stats[i];
      if (!s) continue;
      const name = names[i];
      const entry: ScanEntry = { name, abs: childPath(abs, name), rel: joinPath(rel, name), st: s.st, type: 'FILE' };
      if (s.kind === 'DIR') {
        entry.type = 'DIR';
        if (this.excludes.excludesDir(entry.rel) || (await this.excludes.excludesCacheDir(entry.abs))) hooks.skipped();
        else out.push(entry);
      } else if (s.kind === 'SYMLINK') {
        entry.type = 'SYMLINK';
        out.push(entry);
      } else if (s.kind === 'FILE' && !this.excludes.excludesFile(entry.rel, Number(s.st.size))) {
        out.push(entry);
      } else {
        hooks.skipped();
      }
    }
    return { entries: out, problems, skipped };
  }
}

/**
 * What a snapshot keeps of an lstat, and the entry's kind. Node's BigIntStats holds eighteen
 * BigInts and four Dates (~1.2 KB): kept whole in every entry, a directory of 200,000 files
 * took over 256 MB of heap to list.
 */
export function entryStat(st: BigIntStats): { st: EntryStat; kind: ScanEntry['type'] | 'OTHER' } {
  const kind = st.isDirectory() ? 'DIR' : st.isSymbolicLink() ? 'SYMLINK' : st.isFile() ? 'FILE' : 'OTHER';
  const kept: EntryStat = { mode: st.mode, size: st.size, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs, ino: st.ino };
  if (kind === 'FILE' && st.nlink > 1n) kept.linked = { nlink: Number(st.nlink), dev: Number(st.dev) };
  return { st: kept, kind };
}

/** Names and link targets are stored as UTF-8; this refuses what is not, instead of replacing it. */
const UTF8 = new TextDecoder('utf-8', { fatal: true });

function notUtf8(what: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${what} is not valid UTF-8: left out (cairn stores names as UTF-8; rename it to back it up)`), { code: 'EILSEQ' });
}

/**
 * The names in a directory. Node decodes them as UTF-8 and puts U+FFFD where a name is not:
 * such a name then lstat'ed nothing (a misleading ENOENT), or its valid twin, and the two
 * made a duplicate that failed the whole snapshot. Only a listing holding U+FFFD is read
 * again as bytes, so every other directory costs one readdir as before.
 */
function listNames(abs: string, problem: (path: string, err: unknown) => void): string[] {
  const names = readdirSync(abs);
  if (!names.some((n) => n.includes('\uFFFD'))) return names;
  const exact: string[] = [];
  for (const raw of readdirSync(abs, { encoding: 'buffer' })) {
    try {
      exact.push(UTF8.decode(raw));
    } catch {
      problem(childPath(abs, raw.toString('utf8')), notUtf8('name'));
    }
  }
  return exact;
}

/** A symlink's target, exactly: one that is not valid UTF-8 is refused, not stored with U+FFFD in it. */
export async function readLinkTarget(abs: string): Promise<string> {
  const target = await fs.readlink(abs);
  if (!target.includes('\uFFFD')) return target;
  try {
    return UTF8.decode(await fs.readlink(abs, { encoding: 'buffer' }));
  } catch {
    throw notUtf8('link target');
  }
}

/**
 * `dir` is absolute and normalised (the walk starts from resolved roots and appends names
 * that hold no '/'), so concatenation gives what path.join would, without re-normalising
 * the whole path for each of a scan's hundreds of thousands of entries.
 */
export function childPath(dir: string, name: string): string {
  return dir.endsWith('/') ? dir + name : `${dir}/${name}`;
}

/** The directory's own stamp; undefined when it is gone or no longer a directory. */
function dirStamp(abs: string): DirStamp | undefined {
  try {
    const st = lstatSync(abs, { bigint: true });
    return st.isDirectory() ? { ino: st.ino, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs } : undefined;
  } catch {
    return undefined;
  }
}

/** The path inside the snapshot of each root: '' for a single root, else its base name. */
export function rootRel(roots: string[], root: string): string {
  return roots.length === 1 ? '' : path.basename(root);
}

export interface DirSize {
  /** Path inside the snapshot with a trailing '/', ready to use as an exclude pattern. */
  path: string;
  bytes: number;
  files: number;
}

export interface ScanSummary {
  files: number;
  dirs: number;
  symlinks: number;
  bytes: number;
  skipped: number;
  errors: number;
  roots: Array<{ path: string; files: number; bytes: number }>;
  /** The directories below the roots that hold the most bytes, largest first. */
  largest: DirSize[];
}

/** How many of the largest directories a pre-scan keeps; enough that the report's five survive collapsing. */
const LARGEST_CANDIDATES = 64;
export const LARGEST_SHOWN = 5;

/**
 * Walk + lstat with the snapshot's exclusion rules, opening no file: what a snapshot would
 * read, in a fraction of the time, so limits can refuse before anything is uploaded.
 */
export async function prescan(roots: string[], excludes: ExcludeMatcher, signal?: AbortSignal, walked?: WalkCache): Promise<ScanSummary> {
  const summary: ScanSummary = { files: 0, dirs: 0, symlinks: 0, bytes: 0, skipped: 0, errors: 0, roots: [], largest: [] };
  const reader = new DirReader(excludes, { problem: () => summary.errors++, skipped: () => summary.skipped++ }, signal, walked && { cache: walked, role: 'record' });
  // Sorted largest first; a directory's total is known once its walk is done.
  const candidates: DirSize[] = [];
  const consider = (d: DirSize) => {
    if (candidates.length === LARGEST_CANDIDATES && d.bytes <= candidates[candidates.length - 1].bytes) return;
    let i = candidates.findIndex((c) => c.bytes < d.bytes);
    if (i < 0) i = candidates.length;
    candidates.splice(i, 0, d);
    if (candidates.length > LARGEST_CANDIDATES) candidates.pop();
  };
  const walk = async (abs: string, rel: string, isRoot: boolean): Promise<{ bytes: number; files: number }> => {
    summary.dirs++;
    let bytes = 0;
    let files = 0;
    const entries = await reader.entries(abs, rel, isRoot);
    checkTreeFits(abs, entries);
    for (const e of entries) {
      if (e.type === 'FILE') {
        files++;
        bytes += Number(e.st.size);
      } else if (e.type === 'SYMLINK') {
        summary.symlinks++;
      } else {
        const sub = await walk(e.abs, e.rel, false);
        consider({ path: `${e.rel}/`, ...sub });
        bytes += sub.bytes;
        files += sub.files;
      }
    }
    return { bytes, files };
  };
  for (const root of roots) {
    const rel = rootRel(roots, root);
    const r = await walk(root, rel, true);
    summary.roots.push({ path: root, ...r });
    summary.files += r.files;
    summary.bytes += r.bytes;
  }
  summary.largest = largestDirs(candidates, LARGEST_SHOWN);
  return summary;
}

/**
 * The fewest bytes an entry takes in a tree blob besides its name: every field is written,
 * defaults included (common/tree.ts), so ten fields of at least a tag and a byte each.
 */
const TREE_ENTRY_MIN_BYTES = 20;
/** The most those fields take (four 64-bit varints of ten bytes, the lengths' varints): past the minimum by this. */
const TREE_ENTRY_MAX_EXTRA = 52;

/**
 * A directory becomes one tree blob, which the server takes up to MAX_TREE_ENTRIES entries and
 * MAX_TREE_BLOB_BYTES: refused here, before any file is read, rather than by the server after
 * every file in it was. The bytes counted are a floor (the entries as they will be encoded,
 * with one chunk id per non-empty file), so a directory that fits is never refused.
 */
export function checkTreeFits(abs: string, entries: ScanEntry[]): void {
  const advice = 'exclude some of them or spread them over subdirectories';
  if (entries.length > MAX_TREE_ENTRIES) {
    throw new CairnError(Code.RESOURCE_EXHAUSTED, `${abs} holds ${entries.length} entries to back up; a directory may hold at most ${MAX_TREE_ENTRIES}: ${advice}`);
  }
  // The exact floor costs a microsecond an entry; only a directory near the limit needs it.
  if (treeBytesFloor(entries, false) + TREE_ENTRY_MAX_EXTRA * entries.length <= MAX_TREE_BLOB_BYTES) return;
  const floor = treeBytesFloor(entries, true);
  if (floor > MAX_TREE_BLOB_BYTES) {
    throw new CairnError(Code.RESOURCE_EXHAUSTED, `${abs} holds ${entries.length} entries whose listing takes at least ${formatBytes(floor)}, past the ${formatBytes(MAX_TREE_BLOB_BYTES)} a directory may take: ${advice}`);
  }
}

/**
 * The fewest bytes the tree of these entries can take (see checkTreeFits): with `exact`, each
 * entry as the archiver will encode it but for its chunk list (one id for a non-empty file);
 * without, every field at its smallest. (The smallest alone let 410,000 one-byte files of
 * 100-byte names through, 63 MB counted for 72 MB encoded, refused only after all were read.)
 */
export function treeBytesFloor(entries: ScanEntry[], exact: boolean): number {
  let floor = 0;
  for (const e of entries) {
    const name = Buffer.byteLength(e.name);
    const target = e.type === 'SYMLINK' ? Number(e.st.size) : 0;
    const chunks = e.type === 'FILE' && e.st.size > 0n ? ID_BYTES + 2 : 0;
    const subtree = e.type === 'DIR' ? ID_BYTES : 0;
    if (!exact) {
      floor += TREE_ENTRY_MIN_BYTES + name + target + chunks + subtree;
      continue;
    }
    const dir = e.type === 'DIR';
    // Fields 1-11 of common/tree.ts encodeNodes; a directory's ctime and inode are written as 0
    // (archiver.ts dirNode), and only a file's link count, when above 1 (archiver.ts metaNode).
    const links = e.type === 'FILE' && e.st.linked ? 1 + varintBytes(BigInt(e.st.linked.nlink)) : 0;
    const body =
      lenField(name) + 2 + 1 + varintBytes(e.st.mode & 0o7777n) + 1 + varintBytes(e.st.mtimeNs) + 1 + varintBytes(dir ? 0n : e.st.size) + chunks + lenField(subtree) + lenField(target) + 1 + varintBytes(dir ? 0n : e.st.ino) + 1 + varintBytes(dir ? 0n : e.st.ctimeNs) + links;
    floor += 1 + varintBytes(BigInt(body)) + body;
  }
  return floor;
}

/** A length-delimited field: tag, length, bytes. */
function lenField(length: number): number {
  return 1 + varintBytes(BigInt(length)) + length;
}

/** Protobuf varint length; negative values take ten bytes (two's complement). */
function varintBytes(v: bigint): number {
  if (v < 0n) return 10;
  let n = 1;
  for (let limit = 128n; v >= limit && n < 10; limit <<= 7n) n++;
  return n;
}

/**
 * The `n` largest directories. One whose bytes are nearly all in one subdirectory is left
 * out for that subdirectory: the deeper path names both and points at what to exclude
 * (`proj/data/` rather than `proj/`).
 */
export function largestDirs(bySizeDesc: DirSize[], n: number): DirSize[] {
  const named = bySizeDesc.filter((d) => !bySizeDesc.some((c) => c !== d && c.path.startsWith(d.path) && c.bytes >= 0.9 * d.bytes));
  return named.slice(0, n);
}

export function describeLargest(dirs: DirSize[]): string {
  return dirs.map((d) => `${d.path} ${formatBytes(d.bytes)} (${d.files} files)`).join(', ');
}

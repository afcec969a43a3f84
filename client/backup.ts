import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Chunker } from '../common/chunker.js';
import { CairnError, Code, failedPrecondition, invalidArgument } from '../common/errors.js';
import { shortId, toHex } from '../common/hash.js';
import type { BeginBackupReply, BlobKind, HelloReply, Snapshot } from '../common/messages.js';
import { formatBytes } from '../common/units.js';
import { CLIENT_VERSION } from '../common/version.js';
import { Archiver, type ArchiveProblem, type ArchiveStats, type BlobSink, type TreeSource } from './archiver.js';
import { CompressPool } from './compress-pool.js';
import { SmallFileReader } from './small-file-reader.js';
import { NO_DEADLINE, type Connection } from './connection.js';
import type { ExcludeMatcher } from './excludes.js';
import { FIND_MISSING_BATCH } from './limits.js';
import { describeLargest, prescan, type ScanSummary } from './scan.js';
import { ParentTreeReader } from './parent-trees.js';
import { TreeCache, type TreeCacheStats } from './tree-cache.js';
import { WalkCache } from './walk-cache.js';
import { readTree } from './tree-reader.js';
import { Uploader } from './uploader.js';

export const DEFAULT_MAX_SHRINK = 0.5;

export interface BackupOptions {
  paths: string[];
  dataset: string;
  host: string;
  tags: string[];
  time?: string;
  excludes: ExcludeMatcher;
  onProgress?: (stats: ArchiveStats) => void;
  /** Aborts the session cleanly (the server releases its pins) when signalled. */
  signal?: AbortSignal;
  /** Refuse, before a session is opened, when the pre-scan measures more bytes than this. */
  maxSize?: number;
  /** Largest share (0..1) of its files or bytes a dataset may lose since its parent snapshot. */
  maxShrink?: number;
  /** Record the snapshot even when a root is empty or the dataset shrank past maxShrink. */
  allowShrink?: boolean;
  /** Keep the new snapshot's trees here and read the parent's from here (TreeCache); none when unset. */
  cacheDir?: string;
}

export interface BackupResult {
  snapshot: Snapshot;
  scan: ScanSummary;
  stats: ArchiveStats;
  problems: ArchiveProblem[];
  uploadedBytes: number;
  /** Parent trees read from the local cache or the server, and trees written to the cache. */
  treeCache?: TreeCacheStats;
  seconds: number;
}

export interface DryRunResult {
  dataset: string;
  host: string;
  parent: Snapshot | null;
  scan: ScanSummary;
  stats: ArchiveStats;
  problems: ArchiveProblem[];
  /** What the server lacks, before compression: what a real run would upload. */
  upload: { chunks: number; bytes: number; trees: number; treeBytes: number };
  seconds: number;
}

/** The host name a snapshot records by default: the machine's, without its domain. */
export function defaultHost(): string {
  return os.hostname().split('.')[0] || 'localhost';
}

/** A share from a percentage such as "50%"; `what` names the flag or field in the error. */
export function parseShare(text: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*%$/.exec(text.trim());
  const pct = Number(m?.[1]);
  if (!m || pct > 100) throw invalidArgument(`${what} ${JSON.stringify(text)} must be a percentage from 0% to 100%, such as 50%`);
  return pct / 100;
}

async function resolveRoots(paths: string[]): Promise<string[]> {
  if (paths.length === 0) throw invalidArgument('name at least one directory to back up');
  const roots = paths.map((p) => path.resolve(p));
  const names = new Set<string>();
  for (const root of roots) {
    let st;
    try {
      st = await fs.stat(root);
    } catch {
      throw new CairnError(Code.NOT_FOUND, `${root} does not exist (is the volume mounted?)`);
    }
    if (!st.isDirectory()) throw invalidArgument(`${root} is not a directory`);
    if (roots.length > 1 && names.has(path.basename(root))) throw invalidArgument(`two paths share the name ${path.basename(root)}; back them up as separate datasets`);
    names.add(path.basename(root));
  }
  return roots;
}

const percent = (share: number) => `${Math.round(share * 1000) / 10}%`;

function checkSize(scan: ScanSummary, maxSize: number, dataset: string): void {
  if (scan.bytes <= maxSize) return;
  const where =
    scan.largest.length > 0
      ? `Largest directories: ${describeLargest(scan.largest)}. Exclude what should not be backed up (for example --exclude '${scan.largest[0].path}') or raise the limit.`
      : 'The bytes are in files directly under the root; exclude some of them or raise the limit.';
  throw failedPrecondition(`dataset ${dataset}: ${formatBytes(scan.bytes)} in ${scan.files} files is over its size limit of ${formatBytes(maxSize)} (--max-size, max_size); nothing was uploaded. ${where}`);
}

/** What a guard measured: the pre-scan before any upload, or the walk before the commit. */
interface Measured {
  files: number;
  bytes: number;
  skipped: number;
  roots: Array<{ path: string; files: number }>;
}

/**
 * The pre-scan only lists: files it counted may fail to open, and a volume may unmount or be
 * emptied while the walk reads it. So the guards run twice, on the pre-scan and on what the
 * walk recorded; the stage says what a refusal left behind.
 */
const GUARD_OUTCOME = {
  prescan: 'nothing was uploaded',
  walk: 'the snapshot was not recorded (the walk read less than the pre-scan listed: unreadable files, or data that went away during the run)',
} as const;
type GuardStage = keyof typeof GUARD_OUTCOME;

/** An empty root is most often a volume that did not mount: it must never become the newest snapshot. */
function checkNotEmpty(m: Measured, dataset: string, stage: GuardStage): void {
  const empty = m.roots.find((r) => r.files === 0);
  if (!empty) return;
  const excluded = m.skipped > 0 ? ` (${m.skipped} entries excluded)` : '';
  throw failedPrecondition(
    `dataset ${dataset}: ${empty.path} holds no files to back up${excluded}; an empty directory is often a volume that did not mount, so ${GUARD_OUTCOME[stage]}. If it really is empty, run cairn snapshot once with --allow-shrink.`,
  );
}

function checkShrink(m: Measured, parent: Snapshot, maxShrink: number, stage: GuardStage): void {
  const [files, bytes] = [Number(parent.summary.files), Number(parent.summary.bytes)];
  const lostFiles = files > 0 ? Math.max(0, files - m.files) / files : 0;
  const lostBytes = bytes > 0 ? Math.max(0, bytes - m.bytes) / bytes : 0;
  if (lostFiles <= maxShrink && lostBytes <= maxShrink) return;
  throw failedPrecondition(
    `dataset ${parent.dataset}@${parent.host} shrank since its last snapshot ${shortId(parent.id)} (${parent.time}): ` +
      `${m.files} files, ${formatBytes(m.bytes)} now against ${files} files, ${formatBytes(bytes)} then; ` +
      `${percent(lostFiles)} of the files and ${percent(lostBytes)} of the bytes are gone, more than the ${percent(maxShrink)} the shrink guard allows (--max-shrink, max_shrink); ` +
      `${GUARD_OUTCOME[stage]}. Check that the path is mounted, complete and readable; if the data really was removed, run cairn snapshot once with --allow-shrink.`,
  );
}

interface Started {
  walked: WalkCache;
  roots: string[];
  hello: HelloReply;
  begin: BeginBackupReply;
  scan: ScanSummary;
}

/** Best effort, and brief: it runs on the way out (a refusal, a shutdown), and the session expires anyway. */
async function abortSession(conn: Connection, sessionId: string): Promise<void> {
  await conn.unary('AbortBackup', { sessionId }, undefined, 10_000).catch(() => undefined);
}

/**
 * What every snapshot, real or dry run, passes before reading a byte: the pre-scan and size
 * limit (before any session exists), then the session and the shrink guard against the
 * parent it names (the session is aborted when the guard refuses).
 */
async function startSession(conn: Connection, opts: BackupOptions): Promise<Started> {
  const roots = await resolveRoots(opts.paths);
  const walked = new WalkCache();
  const scan = await prescan(roots, opts.excludes, opts.signal, walked);
  if (opts.maxSize !== undefined) checkSize(scan, opts.maxSize, opts.dataset);
  if (!opts.allowShrink) checkNotEmpty(scan, opts.dataset, 'prescan');
  const hello = await conn.unary<HelloReply>('Hello', {});
  // Begin and commit wait behind a running prune, for as long as it takes; given up on, they
  // would still open a session or record the snapshot, and a retry would do it twice.
  const begin = await conn.unary<BeginBackupReply>('BeginBackup', { dataset: opts.dataset, host: opts.host, paths: roots, tags: opts.tags, time: opts.time ?? '' }, undefined, NO_DEADLINE);
  try {
    if (begin.parent && !opts.allowShrink) checkShrink(scan, begin.parent, opts.maxShrink ?? DEFAULT_MAX_SHRINK, 'prescan');
  } catch (err) {
    await abortSession(conn, begin.sessionId);
    throw err;
  }
  return { roots, hello, begin, scan, walked };
}

async function openCache(opts: BackupOptions, hello: HelloReply, readOnly = false): Promise<TreeCache | undefined> {
  return opts.cacheDir === undefined ? undefined : TreeCache.open(opts.cacheDir, hello.repositoryId, opts.dataset, opts.host, readOnly);
}

/** Parent trees from the cache, else the server, read ahead of the walk; new trees go to the cache when `record`. */
function treeSource(conn: Connection, cache: TreeCache | undefined, record: boolean): TreeSource {
  const fromServer = (id: Buffer) => readTree(conn, id, `parent tree ${toHex(id)}`);
  const parents = new ParentTreeReader(cache ? (id) => cache.read(id, fromServer) : fromServer);
  return { readParent: (id) => parents.read(id), made: (id, bytes) => (record ? cache?.record(id, bytes) : undefined) };
}

/** One snapshot, end to end: guards, Begin, walk + upload, Commit; any failure aborts the session. */
export async function runBackup(conn: Connection, opts: BackupOptions): Promise<BackupResult> {
  const started = Date.now();
  const { roots, hello, begin, scan, walked } = await startSession(conn, opts);
  const pool = new CompressPool(hello.compressionLevel);
  const uploader = new Uploader(conn, begin.sessionId, pool);
  const chunker = new Chunker(hello.chunker);
  const small = new SmallFileReader(hello.compressionLevel, chunker.minSize);
  const cache = await openCache(opts, hello);
  const trees = treeSource(conn, cache, true);
  const archiver = new Archiver({ chunker, sink: uploader, small, excludes: opts.excludes, trees, walked, onProgress: opts.onProgress, signal: opts.signal });
  const onAbort = () => uploader.abort();
  opts.signal?.addEventListener('abort', onAbort);
  try {
    const parentRoot = begin.parent ? Buffer.from(begin.parent.rootTree, 'hex') : undefined;
    const root = await archiver.archive(roots, parentRoot);
    if (opts.signal?.aborted) throw new CairnError(Code.CANCELLED, 'snapshot interrupted');
    const s = archiver.stats;
    if (!opts.allowShrink) {
      const recorded: Measured = { files: s.files, bytes: s.bytes, skipped: s.skipped, roots: archiver.roots };
      checkNotEmpty(recorded, opts.dataset, 'walk');
      if (begin.parent) checkShrink(recorded, begin.parent, opts.maxShrink ?? DEFAULT_MAX_SHRINK, 'walk');
    }
    await uploader.finish();
    const snapshot = await conn.unary<Snapshot>('CommitBackup', {
      sessionId: begin.sessionId,
      rootTree: root,
      clientVersion: CLIENT_VERSION,
      summary: {
        files: String(s.files),
        dirs: String(s.dirs),
        symlinks: String(s.symlinks),
        bytes: String(s.bytes),
        bytesRead: String(s.bytesRead),
        errors: String(s.errors),
        durationSeconds: (Date.now() - started) / 1000,
        newBytes: '0',
        newChunks: '0',
      },
    }, undefined, NO_DEADLINE);
    await cache?.prune();
    return { snapshot, scan, stats: archiver.stats, problems: archiver.problems, uploadedBytes: uploader.stats.bytesUploaded, treeCache: cache?.stats, seconds: (Date.now() - started) / 1000 };
  } catch (err) {
    uploader.abort();
    await abortSession(conn, begin.sessionId);
    if (opts.signal?.aborted) throw new CairnError(Code.CANCELLED, `snapshot interrupted; session ${begin.sessionId} aborted, nothing recorded`);
    throw err;
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
    await Promise.all([pool.close(), small.close(), cache?.flush()]);
  }
}

/** Ids beyond this many are forgotten and may be counted twice: a dry run's memory stays bounded. */
const MAX_REMEMBERED_IDS = 1_000_000;

/** The dry run's sink: asks FindMissing in batches and adds up what the server lacks; uploads nothing. */
class MissingCounter implements BlobSink {
  readonly upload = { chunks: 0, bytes: 0, trees: 0, treeBytes: 0 };
  private readonly seen = new Set<string>();
  private batch: Array<{ id: Buffer; length: number; kind: BlobKind }> = [];

  constructor(
    private readonly conn: Connection,
    private readonly sessionId: string,
    private readonly signal?: AbortSignal,
  ) {}

  offer(id: Buffer, raw: Buffer, kind: BlobKind): Promise<void> {
    return this.count(id, raw.length, kind);
  }

  offerPacked(id: Buffer, _stored: Buffer, rawLength: number): Promise<void> {
    return this.count(id, rawLength, 'DATA');
  }

  private async count(id: Buffer, length: number, kind: BlobKind): Promise<void> {
    if (this.signal?.aborted) throw new CairnError(Code.CANCELLED, 'dry run interrupted');
    const hex = toHex(id);
    if (this.seen.has(hex)) return;
    if (this.seen.size >= MAX_REMEMBERED_IDS) this.seen.clear();
    this.seen.add(hex);
    this.batch.push({ id, length, kind });
    if (this.batch.length >= FIND_MISSING_BATCH) await this.flush();
  }

  async flush(): Promise<void> {
    const batch = this.batch;
    this.batch = [];
    if (batch.length === 0) return;
    const reply = await this.conn.unary<{ missing: Buffer[] }>('FindMissing', { sessionId: this.sessionId, ids: batch.map((b) => b.id) });
    const missing = new Set(reply.missing.map(toHex));
    for (const b of batch) {
      if (!missing.has(toHex(b.id))) continue;
      if (b.kind === 'TREE') {
        this.upload.trees++;
        this.upload.treeBytes += b.length;
      } else {
        this.upload.chunks++;
        this.upload.bytes += b.length;
      }
    }
  }
}

/**
 * Everything a snapshot would do short of uploading: the same guards, the same walk and
 * change detection against the parent, changed files chunked and hashed so FindMissing can
 * say what the server lacks; then the session is aborted, so nothing is recorded.
 */
export async function dryRunBackup(conn: Connection, opts: BackupOptions): Promise<DryRunResult> {
  const started = Date.now();
  const { roots, hello, begin, scan, walked } = await startSession(conn, opts);
  const chunker = new Chunker(hello.chunker);
  // Nothing is uploaded: small files are read and hashed, not compressed.
  const small = new SmallFileReader(undefined, chunker.minSize);
  try {
    const counter = new MissingCounter(conn, begin.sessionId, opts.signal);
    // Read from the cache, never written: a dry run records nothing.
    const trees = treeSource(conn, await openCache(opts, hello, true), false);
    const archiver = new Archiver({ chunker, sink: counter, small, excludes: opts.excludes, trees, walked, onProgress: opts.onProgress, signal: opts.signal });
    await archiver.archive(roots, begin.parent ? Buffer.from(begin.parent.rootTree, 'hex') : undefined);
    await counter.flush();
    return { dataset: opts.dataset, host: opts.host, parent: begin.parent, scan, stats: archiver.stats, problems: archiver.problems, upload: counter.upload, seconds: (Date.now() - started) / 1000 };
  } finally {
    await small.close();
    await abortSession(conn, begin.sessionId);
  }
}

import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Chunker } from '../common/chunker.js';
import { CairnError, Code, invalidArgument } from '../common/errors.js';
import type { BeginBackupReply, HelloReply, Node, Snapshot } from '../common/messages.js';
import { CLIENT_VERSION } from '../common/version.js';
import { Archiver, type ArchiveProblem, type ArchiveStats } from './archiver.js';
import { CompressPool } from './compress-pool.js';
import type { Connection } from './connection.js';
import type { ExcludeMatcher } from './excludes.js';
import { Uploader } from './uploader.js';

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
}

export interface BackupResult {
  snapshot: Snapshot;
  stats: ArchiveStats;
  problems: ArchiveProblem[];
  uploadedBytes: number;
  seconds: number;
}

export async function readWholeTree(conn: Connection, id: Buffer): Promise<Node[]> {
  const nodes: Node[] = [];
  for await (const msg of conn.stream<{ nodes: Node[] }>('ReadTree', { id })) nodes.push(...msg.nodes);
  return nodes;
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

/** One snapshot, end to end: Begin, walk + upload, Commit; any failure aborts the session. */
export async function runBackup(conn: Connection, opts: BackupOptions): Promise<BackupResult> {
  const started = Date.now();
  const roots = await resolveRoots(opts.paths);
  const hello = await conn.unary<HelloReply>('Hello', {});
  const chunker = new Chunker(hello.chunker);
  const begin = await conn.unary<BeginBackupReply>('BeginBackup', { dataset: opts.dataset, host: opts.host, paths: roots, tags: opts.tags, time: opts.time ?? '' });
  const pool = new CompressPool(hello.compressionLevel);
  const uploader = new Uploader(conn, begin.sessionId, pool);
  const archiver = new Archiver(chunker, uploader, opts.excludes, (id) => readWholeTree(conn, id), opts.onProgress);
  const onAbort = () => uploader.abort();
  opts.signal?.addEventListener('abort', onAbort);
  try {
    const parentRoot = begin.parent ? Buffer.from(begin.parent.rootTree, 'hex') : undefined;
    const root = await archiver.archive(roots, parentRoot);
    if (opts.signal?.aborted) throw new CairnError(Code.CANCELLED, 'snapshot interrupted');
    await uploader.finish();
    const s = archiver.stats;
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
    });
    return { snapshot, stats: archiver.stats, problems: archiver.problems, uploadedBytes: uploader.stats.bytesUploaded, seconds: (Date.now() - started) / 1000 };
  } catch (err) {
    uploader.abort();
    await conn.unary('AbortBackup', { sessionId: begin.sessionId }).catch(() => undefined);
    if (opts.signal?.aborted) throw new CairnError(Code.CANCELLED, `snapshot interrupted; session ${begin.sessionId} aborted, nothing recorded`);
    throw err;
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
    await pool.close();
  }
}


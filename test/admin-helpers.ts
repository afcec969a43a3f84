import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { expect } from 'vitest';
import { Connection } from '../client/connection.js';
import { hash, toHex } from '../common/hash.js';
import { createLogger } from '../common/log.js';
import type { BeginBackupReply, Blob, BlobKind, Snapshot } from '../common/messages.js';
import { encodeTree, emptyNode } from '../common/tree.js';
import { FileStore } from '../server/file-store.js';
import { CairnServer } from '../server/server.js';
import { runCli, tmpDir } from './harness.js';
import { describeTree, randomBytes, writeFile } from './tree-gen.js';

/**
 * Helpers for the retention, prune, check and rebuild suites: an in-process server (so a test
 * can hook prune's checkpoints), backups driven through the gRPC API step by step, and
 * store measurements.
 */

export interface InProcess {
  server: CairnServer;
  addr: string;
  conn: Connection;
  dir: string;
  stop(): Promise<void>;
}

export async function startInProcess(opts: { packSize?: number } = {}): Promise<InProcess> {
  const dir = tmpDir('cairn-inproc-');
  const server = await CairnServer.start({
    listen: '127.0.0.1:0',
    store: new FileStore(path.join(dir, 'store')),
    indexDir: path.join(dir, 'index'),
    log: createLogger('silent', 'cairn-server'),
    packSize: opts.packSize ?? 64 * 1024,
  });
  const addr = `127.0.0.1:${server.port}`;
  const conn = new Connection({ server: addr });
  return {
    server,
    addr,
    conn,
    dir,
    async stop() {
      conn.close();
      await server.stop();
    },
  };
}

/** A blob as a client sends it, stored raw: tests control bytes exactly. */
export function rawBlob(data: Buffer, kind: BlobKind = 'DATA'): Blob {
  return { id: hash(data), kind, compression: 'NONE', rawLength: data.length, data };
}

/** A one-directory tree of files, each file one chunk; returns the tree blob and its id. */
export function flatTree(files: Record<string, Buffer>): Blob {
  const nodes = Object.keys(files)
    .sort()
    .map((name) => {
      const n = emptyNode(name, 'FILE');
      n.mode = 0o644;
      n.size = String(files[name].length);
      n.chunks = [hash(files[name])];
      return n;
    });
  return rawBlob(encodeTree(nodes), 'TREE');
}

export async function upload(conn: Connection, sessionId: string, blobs: Blob[]): Promise<void> {
  const { call, result } = conn.clientStream<unknown>('Upload');
  call.write({ sessionId, blobs });
  call.end();
  await result;
}

export async function findMissing(conn: Connection, sessionId: string, ids: Buffer[]): Promise<string[]> {
  const r = await conn.unary<{ missing: Buffer[] }>('FindMissing', { sessionId, ids });
  return r.missing.map(toHex);
}

export function begin(conn: Connection, dataset: string, time = ''): Promise<BeginBackupReply> {
  return conn.unary<BeginBackupReply>('BeginBackup', { dataset, host: 'h', paths: ['/data'], tags: [], time });
}

export function commit(conn: Connection, sessionId: string, root: Blob): Promise<Snapshot> {
  return conn.unary<Snapshot>('CommitBackup', { sessionId, rootTree: root.id, clientVersion: 'test' });
}

/** A whole backup of a flat directory through the API, as a well-behaved client does it. */
export async function backupFiles(conn: Connection, dataset: string, files: Record<string, Buffer>, time = ''): Promise<Snapshot> {
  const { sessionId } = await begin(conn, dataset, time);
  const root = flatTree(files);
  const blobs = [...Object.values(files).map((d) => rawBlob(d)), root];
  const missing = new Set(await findMissing(conn, sessionId, blobs.map((b) => b.id)));
  await upload(conn, sessionId, blobs.filter((b) => missing.has(toHex(b.id))));
  return commit(conn, sessionId, root);
}

/** Bytes of all files under `dir` (temporary files of interrupted writes excluded). */
export async function dirBytes(dir: string): Promise<number> {
  let n = 0;
  let entries;
  try {
    entries = await fs.readdir(dir, { withFileTypes: true, recursive: true });
  } catch {
    return 0;
  }
  for (const e of entries) {
    if (e.isFile() && !e.name.includes('.tmp-')) n += (await fs.stat(path.join(e.parentPath, e.name))).size;
  }
  return n;
}

/** Restores a snapshot with the CLI and returns what the restored tree holds. */
export async function restored(server: string, ref: string, env?: Record<string, string>): Promise<Awaited<ReturnType<typeof describeTree>>> {
  const target = path.join(tmpDir('cairn-restore-'), 'out');
  const r = await runCli(['restore', '--snapshot', ref, target], { server, env });
  expect(r.code, r.stderr).toBe(0);
  return describeTree(target);
}

/** Contents only (path -> sha): what an API-made snapshot must give back. */
export async function restoredContents(server: string, ref: string): Promise<Record<string, string | undefined>> {
  return Object.fromEntries((await restored(server, ref)).filter((e) => e.type === 'file').map((e) => [e.path, e.sha]));
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * Three versions of a data directory, each a separate tree: v2 rewrites half of v1's files and
 * adds one, v3 rewrites a quarter more. Forgetting v1 and v2 leaves packs partly used.
 */
export async function writeVersions(base: string): Promise<string[]> {
  const dirs = ['v1', 'v2', 'v3'].map((v) => path.join(base, v));
  const content = (i: number, version: number) => {
    const changed = (version >= 2 && i < 12) || (version >= 3 && i >= 12 && i < 18);
    return randomBytes(40 * 1024 + i * 100, changed ? version * 100 + i : i + 1);
  };
  for (let v = 1; v <= 3; v++) {
    for (let i = 0; i < 24; i++) await writeFile(path.join(dirs[v - 1], `d${i % 2}`, `f${i}.bin`), content(i, v));
    if (v >= 2) await writeFile(path.join(dirs[v - 1], 'extra.bin'), randomBytes(30 * 1024, 77));
  }
  return dirs;
}

export interface PruneOut {
  dryRun: boolean;
  packsDeleted: number;
  packsRewritten: number;
  chunksRemoved: number;
  bytesFreed: number;
  bytesUnusedKept: number;
  requests: Record<string, number>;
}

export interface CheckOut {
  ok: boolean;
  snapshotsChecked: number;
  treesChecked: number;
  packsChecked: number;
  packsRead: number;
  blobsRead: number;
  problemsOmitted: number;
  problemCounts: Record<string, number>;
  problems: Array<{ kind: string; message: string; pack: string; chunk: string; snapshots: string[]; files: string[] }>;
}

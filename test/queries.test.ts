import { spawn } from 'node:child_process';
import { openSync, closeSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Connection } from '../client/connection.js';
import { hash } from '../common/hash.js';
import type { BeginBackupReply, Snapshot } from '../common/messages.js';
import { emptyNode, encodeTree } from '../common/tree.js';
import { begin, commit, flatTree, rawBlob, startInProcess, upload } from './admin-helpers.js';
import { cleanupTmp, cliJson, ROOT, runCli, startServer, tmpDir, type ServerHandle } from './harness.js';
import { describeTree, randomBytes, writeFile } from './tree-gen.js';

const MiB = 1024 * 1024;
const MINUTE = 60_000;
const HISTORY_SNAPSHOTS = 2000;

/** Every line of a --json run, parsed; fails with stderr when the command failed. */
async function jsonLines<T>(args: string[], server: string): Promise<T[]> {
  const r = await runCli(['--json', ...args], { server });
  if (r.code !== 0) throw new Error(`cairn ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as T);
}

/** `cairn cat ... > file`, as a user runs it: stdout is a file, bytes are compared afterwards. */
function catToFile(args: string[], server: string, file: string): Promise<{ code: number | null; stderr: string }> {
  const fd = openSync(file, 'w');
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, [path.join(ROOT, 'dist/client/cli-start.js'), 'cat', ...args], { env: { ...process.env, CAIRN_SERVER: server }, stdio: ['ignore', fd, 'pipe'] });
    let stderr = '';
    proc.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    proc.on('exit', (code) => {
      closeSync(fd);
      resolve({ code, stderr });
    });
  });
}

/**
 * Snapshots straight over gRPC, without walking a directory: Begin with an explicit time,
 * then Commit a tiny tree uploaded once. A few ms each, so thousands fit in a test.
 */
class SnapshotFactory {
  private readonly tree = encodeTree([{ ...emptyNode('README', 'SYMLINK'), mode: 0o777, target: 'nowhere' }]);
  private readonly root = hash(this.tree);
  private uploaded = false;

  constructor(private readonly conn: Connection) {}

  async make(s: { dataset: string; host: string; time: Date; tags?: string[] }): Promise<Snapshot> {
    const begin = await this.conn.unary<BeginBackupReply>('BeginBackup', { dataset: s.dataset, host: s.host, paths: ['/gen'], tags: s.tags ?? [], time: s.time.toISOString() });
    if (!this.uploaded) {
      const { call, result } = this.conn.clientStream('Upload');
      call.write({ sessionId: begin.sessionId, blobs: [{ id: this.root, kind: 'TREE', compression: 'NONE', rawLength: this.tree.length, data: this.tree }] });
      call.end();
      await result;
      this.uploaded = true;
    }
    return this.conn.unary<Snapshot>('CommitBackup', { sessionId: begin.sessionId, rootTree: this.root, clientVersion: 'test' });
  }

  async many(specs: Array<{ dataset: string; host: string; time: Date; tags?: string[] }>, concurrency = 16): Promise<void> {
    await this.make(specs[0]);
    let next = 1;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < specs.length) await this.make(specs[next++]);
      }),
    );
  }
}

interface HistoryRow {
  id: string;
  dataset: string;
  host: string;
  time: string;
  tags: string[];
}

interface LsRow {
  path: string;
  type: string;
  mode: string;
  size: number;
  mtime: string;
  target?: string;
}

interface DiffRow {
  path?: string;
  change?: string;
  type?: string;
  oldSize?: number;
  newSize?: number;
  summary?: { added: number; removed: number; modified: number; metadata: number; treesRead: number };
}

interface StatusJson {
  dataset: string;
  host: string;
  lastSnapshot: string;
  ageSeconds: number;
  bytes: number;
  files: number;
  stale: boolean;
  state: string;
  failing: boolean;
  lastError: string;
  lastErrorTime: string;
  lastSuccessTime: string;
}

interface StatsJson {
  snapshots: number;
  logicalBytes: number;
  storedBytes: number;
  rawBytes: number;
  chunks: number;
  packs: number;
  dedupRatio: number;
  compressionRatio: number;
}

const OLD = new Date('2020-01-02T03:04:05.678Z');

/** The tree the browse and diff tests snapshot first; `changeTree` then makes exactly the changes listed in the diff test. */
async function makeTree(root: string): Promise<void> {
  await writeFile(path.join(root, 'reports/q1.csv'), 'quarter,revenue\n1,100\n', { mtime: OLD });
  await writeFile(path.join(root, 'reports/q2.csv'), 'quarter,revenue\n2,200\n', { mtime: OLD, mode: 0o644 });
  await writeFile(path.join(root, 'reports/sub/deep.csv'), 'a,b\n1,2\n', { mtime: OLD });
  await writeFile(path.join(root, 'data/big.bin'), randomBytes(6 * MiB, 7), { mtime: OLD });
  await writeFile(path.join(root, 'data/small.bin'), randomBytes(1000, 8), { mtime: OLD });
  await writeFile(path.join(root, 'notes.txt'), 'notes\n', { mtime: OLD });
  await writeFile(path.join(root, 'meta.txt'), 'mode changes\n', { mtime: OLD, mode: 0o644 });
  await writeFile(path.join(root, 'touch.txt'), 'mtime changes\n', { mtime: OLD });
  await writeFile(path.join(root, 'olddir/x.txt'), 'xx', { mtime: OLD });
  await writeFile(path.join(root, 'olddir/y/z.txt'), 'zzz', { mtime: OLD });
  await writeFile(path.join(root, 'swap'), 'file then dir', { mtime: OLD });
  await fs.symlink('notes.txt', path.join(root, 'link'));
}

async function changeTree(root: string): Promise<void> {
  await writeFile(path.join(root, 'reports/q1.csv'), 'quarter,revenue\n1,100\n1b,150\n', { mtime: OLD });
  await writeFile(path.join(root, 'reports/q3.csv'), 'quarter,revenue\n3,300\n', { mtime: OLD });
  await fs.rm(path.join(root, 'reports/q2.csv'));
  await fs.chmod(path.join(root, 'meta.txt'), 0o600);
  await fs.utimes(path.join(root, 'touch.txt'), new Date('2021-01-01T00:00:00Z'), new Date('2021-01-01T00:00:00Z'));
  await fs.rm(path.join(root, 'olddir'), { recursive: true });
  await writeFile(path.join(root, 'newdir/a.txt'), 'new', { mtime: OLD });
  await fs.rm(path.join(root, 'swap'));
  await writeFile(path.join(root, 'swap/inner.txt'), 'inner', { mtime: OLD });
  await fs.rm(path.join(root, 'link'));
  await fs.symlink('reports', path.join(root, 'link'));
}

describe('history, browsing, diff, find, stats and status over real gRPC', () => {
  let server: ServerHandle;
  let conn: Connection;
  let src: string;
  let snapA: Snapshot;
  let snapB: Snapshot;
  /** Real now when the history snapshots were made; they sit at now - (i h + 30 min), i = 0..1999. */
  let t0: number;
  /** OLD as the file system stored it (utimes rounds through float seconds), truncated to ms as cairn prints it. */
  let oldIso: string;
  const history: Array<{ time: Date; host: string; tags: string[] }> = [];
  const cli = (args: string[]) => runCli(args, { server: server.addr });
  const json = <T>(args: string[]) => jsonLines<T>(args, server.addr);

  beforeAll(async () => {
    server = await startServer();
    conn = new Connection({ server: server.addr });
    src = path.join(tmpDir(), 'data');
    await makeTree(src);
    oldIso = new Date(Number((await fs.stat(path.join(src, 'notes.txt'), { bigint: true })).mtimeNs / 1_000_000n)).toISOString();
    snapA = (await cliJson<{ snapshot: Snapshot }>(['snapshot', src, '--dataset', 'tree', '--host', 'ws1'], { server: server.addr })).snapshot;
    await changeTree(src);
    snapB = (await cliJson<{ snapshot: Snapshot }>(['snapshot', src, '--dataset', 'tree', '--host', 'ws1'], { server: server.addr })).snapshot;
  });
  afterAll(async () => {
    conn?.close();
    await server?.stop();
    cleanupTmp();
  });

  it(`creates ${HISTORY_SNAPSHOTS} snapshots over gRPC, then filters and pages history over them`, async () => {
    t0 = Date.now();
    for (let i = 0; i < HISTORY_SNAPSHOTS; i++) {
      history.push({ time: new Date(t0 - i * 60 * MINUTE - 30 * MINUTE), host: `h${i % 2}`, tags: i % 7 === 0 ? ['weekly'] : [] });
    }
    let started = Date.now();
    await new SnapshotFactory(conn).many(history.map((h) => ({ dataset: 'hist', ...h })));
    const createMs = Date.now() - started;

    started = Date.now();
    const all = await json<HistoryRow>(['history', '--dataset', 'hist']);
    const listMs = Date.now() - started;
    console.log(`history: created ${HISTORY_SNAPSHOTS} snapshots in ${createMs} ms; cairn history --json over them in ${listMs} ms`);
    expect(all.map((s) => s.time)).toEqual(history.map((h) => h.time.toISOString()));
    expect(new Set(all.map((s) => s.id)).size).toBe(HISTORY_SNAPSHOTS);

    // Read-only queries: run side by side, the CLI start-up dominates each one.
    const day = new Date(t0 - 40 * 24 * 60 * MINUTE).toISOString().slice(0, 10);
    const [h1, weekly, lastWeek, window, beforeDay, bad, ...pages] = await Promise.all([
      json<HistoryRow>(['history', '--dataset', 'hist', '--host', 'h1']),
      json<HistoryRow>(['history', '--dataset', 'hist', '--tag', 'weekly']),
      json<HistoryRow>(['history', '--dataset', 'hist', '--since', '7d']),
      json<HistoryRow>(['history', '--dataset', 'hist', '--since', '3d', '--until', '2d']),
      json<HistoryRow>(['history', '--dataset', 'hist', '--until', day]),
      cli(['history', '--since', 'yesterday']),
      ...[1, 2, 3, 4, 5].map((page) => json<HistoryRow>(['history', '--dataset', 'hist', '--limit', '500', '--page', String(page)])),
    ]);
    expect(h1.map((s) => s.time)).toEqual(history.filter((h) => h.host === 'h1').map((h) => h.time.toISOString()));
    expect(weekly).toHaveLength(Math.ceil(HISTORY_SNAPSHOTS / 7));
    expect(weekly.every((s) => s.tags.includes('weekly'))).toBe(true);

    // Relative times count back from the CLI's now; snapshots sit 30 min off every hour mark, so the test's own runtime cannot move a boundary.
    expect(lastWeek).toHaveLength(168);
    expect(window.map((s) => s.time)).toEqual(history.slice(48, 72).map((h) => h.time.toISOString()));
    expect(beforeDay.map((s) => s.time)).toEqual(history.filter((h) => h.time.getTime() < Date.parse(day)).map((h) => h.time.toISOString()));

    expect(pages.map((p) => p.length)).toEqual([500, 500, 500, 500, 0]);
    expect(pages.flat().map((s) => s.id)).toEqual(all.map((s) => s.id));

    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/INVALID_ARGUMENT: --since "yesterday" is neither a duration/);
  });

  it('ls lists what the snapshot holds: every path, type, size, mode and mtime of the files it saved', async () => {
    const expected = await describeTree(src);
    const listed = await json<LsRow>(['ls', 'latest', '--dataset', 'tree', '--recursive']);
    expect(listed.map((e) => e.path)).toEqual(expected.map((e) => e.path));
    for (const [i, e] of expected.entries()) {
      const l = listed[i];
      expect(l.type).toBe(e.type);
      if (e.type === 'file') expect(l.size).toBe(e.size);
      if (e.type === 'symlink') expect(l.target).toBe(e.target);
      else {
        expect(Number.parseInt(l.mode, 8)).toBe(e.mode);
        expect(Date.parse(l.mtime)).toBe(e.mtimeMs);
      }
    }

    const reports = await json<LsRow>(['ls', snapB.id.slice(0, 12), 'reports']);
    expect(reports.map((e) => `${e.path}:${e.type}`)).toEqual(['reports/q1.csv:file', 'reports/q3.csv:file', 'reports/sub:dir']);
    const one = await json<LsRow>(['ls', snapA.id, '/reports/q2.csv']);
    expect(one).toEqual([{ path: 'reports/q2.csv', type: 'file', mode: '0644', size: 22, mtime: oldIso }]);

    const human = await cli(['ls', 'latest', '--dataset', 'tree', '--long']);
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(/^-rw------- +13 B {2}2020-01-02 03:04:05Z {2}meta\.txt$/m);
    expect(human.stdout).toMatch(/^drwxr-xr-x +- .* {2}reports\/$/m);
    expect(human.stdout).toMatch(/^lrwxrwxrwx .* {2}link -> reports$/m);
  });

  it('cat streams a multi-chunk file byte for byte, and an old version from an earlier snapshot', async () => {
    const dir = tmpDir();
    const big = path.join(dir, 'big.bin');
    const r = await catToFile(['latest', '--dataset', 'tree', 'data/big.bin'], server.addr, big);
    expect(r).toEqual({ code: 0, stderr: '' });
    expect((await fs.readFile(big)).equals(await fs.readFile(path.join(src, 'data/big.bin')))).toBe(true);

    const old = path.join(dir, 'q2.csv');
    expect((await catToFile([snapA.id.slice(0, 10), 'reports/q2.csv'], server.addr, old)).code).toBe(0);
    expect(await fs.readFile(old, 'utf8')).toBe('quarter,revenue\n2,200\n');

    const isDir = await cli(['cat', 'latest', '--dataset', 'tree', 'reports']);
    expect(isDir.code).toBe(1);
    expect(isDir.stderr).toMatch(/INVALID_ARGUMENT: reports is a directory/);
  });

  it('diff of two snapshots with known changes gives exactly those changes, with sizes', async () => {
    const rows = await json<DiffRow>(['diff', snapA.id, snapB.id]);
    const changes = rows.filter((r) => r.change).map((r) => `${r.change} ${r.type} ${r.path} ${r.oldSize}->${r.newSize}`);
    expect(changes).toEqual([
      'modified symlink link 0->0',
      'metadata file meta.txt 13->13',
      'added dir newdir 0->0',
      'added file newdir/a.txt 0->3',
      'removed dir olddir 0->0',
      'removed file olddir/x.txt 2->0',
      'removed dir olddir/y 0->0',
      'removed file olddir/y/z.txt 3->0',
      'modified file reports/q1.csv 22->29',
      'removed file reports/q2.csv 22->0',
      'added file reports/q3.csv 0->22',
      'removed file swap 13->0',
      'added dir swap 0->0',
      'added file swap/inner.txt 0->5',
      'metadata file touch.txt 14->14',
    ]);
    expect(rows.at(-1)?.summary).toMatchObject({ added: 5, removed: 6, modified: 2, metadata: 2 });

    const same = await json<DiffRow>(['diff', snapB.id, 'latest', '--dataset', 'tree']);
    expect(same).toEqual([{ summary: expect.objectContaining({ added: 0, removed: 0, modified: 0, metadata: 0, treesRead: 0 }) }]);

    const human = await cli(['diff', snapA.id.slice(0, 12), snapB.id.slice(0, 12)]);
    expect(human.stdout).toMatch(/^M {2}22 B -> 29 B +reports\/q1\.csv$/m);
    expect(human.stdout).toMatch(/^5 added \(30 B\), 6 removed \(40 B\), 2 modified, 2 metadata only$/m);
  });

  it('diff descends only into subtrees whose ids differ: 50 dirs, one file changed, 4 trees read', async () => {
    const root = path.join(tmpDir(), 'fifty');
    for (let i = 0; i < 50; i++) await writeFile(path.join(root, `d${String(i).padStart(2, '0')}`, 'f.txt'), `file ${i}\n`, { mtime: OLD });
    const a = (await cliJson<{ snapshot: Snapshot }>(['snapshot', root, '--dataset', 'fifty', '--host', 'ws1'], { server: server.addr })).snapshot;
    await writeFile(path.join(root, 'd17/f.txt'), 'changed\n', { mtime: OLD });
    const b = (await cliJson<{ snapshot: Snapshot }>(['snapshot', root, '--dataset', 'fifty', '--host', 'ws1'], { server: server.addr })).snapshot;
    const rows = await json<DiffRow>(['diff', a.id, b.id]);
    expect(rows).toEqual([
      { path: 'd17/f.txt', change: 'modified', type: 'file', oldSize: 8, newSize: 8 },
      { summary: expect.objectContaining({ modified: 1, added: 0, removed: 0, metadata: 0, treesRead: 4 }) },
    ]);
  });

  it('find answers which snapshots hold matching paths, with size and mtime, newest first', async () => {
    const csv = await json<{ snapshot: string; path: string; type: string; size: number; mtime: string }>(['find', '*.csv', '--dataset', 'tree']);
    const row = (s: Snapshot, p: string, size: number) => ({ snapshot: s.id, time: s.time, path: p, type: 'file', size, mtime: oldIso });
    expect(csv).toEqual([
      row(snapB, 'reports/q1.csv', 29),
      row(snapB, 'reports/q3.csv', 22),
      row(snapB, 'reports/sub/deep.csv', 8),
      row(snapA, 'reports/q1.csv', 22),
      row(snapA, 'reports/q2.csv', 22),
      row(snapA, 'reports/sub/deep.csv', 8),
    ]);
    const q2 = await json<{ snapshot: string }>(['find', 'reports/q2.csv']);
    expect(q2.map((m) => m.snapshot)).toEqual([snapA.id]);
    expect(await json(['find', '*.csv', '--dataset', 'tree', '--limit', '2'])).toHaveLength(2);
    // Every history snapshot holds README; only those of the last 7 days count, each walked once and then replayed.
    const readmes = await json<{ path: string; type: string }>(['find', 'README', '--dataset', 'hist', '--since', '7d']);
    expect(readmes).toHaveLength(168);
    expect(readmes.every((m) => m.path === 'README' && m.type === 'symlink')).toBe(true);
    const none = await cli(['find', '*.parquet']);
    expect(none.stdout.trim()).toBe('no matches');
  });

  it("restore --include 'reports/**' writes exactly the reports subtree", async () => {
    const target = path.join(tmpDir(), 'partial');
    const r = await cli(['restore', '--snapshot', 'latest', '--dataset', 'tree', '--include', 'reports/**', target]);
    expect(r.code).toBe(0);
    const expected = (await describeTree(src)).filter((e) => e.path === 'reports' || e.path.startsWith('reports/'));
    expect(await describeTree(target)).toEqual(expected);
  });

  it('restore --include that matches nothing says so and exits 3; a matching one beside it still restores', async () => {
    const target = path.join(tmpDir(), 'typo');
    const r = await cli(['restore', '--snapshot', 'latest', '--dataset', 'tree', '--include', './reports/**', '--include', 'reports/**', target]);
    expect(r.code, r.stderr).toBe(3);
    expect(r.stderr).toMatch(/^warning: --include \.\/reports\/\*\* matches nothing in snapshot [0-9a-f]{8} \(patterns match paths from the snapshot's root, such as reports\/\*\* or runs\/run-1\/weights\.bin\)$/m);
    expect(r.stderr).not.toContain('--include reports/** matches nothing');
    expect((await describeTree(target)).some((e) => e.path.startsWith('reports/'))).toBe(true);
    // A pattern below an included directory still counts as matching.
    const nested = await cli(['restore', '--snapshot', 'latest', '--dataset', 'tree', '--include', 'reports', '--include', 'reports/**', path.join(tmpDir(), 'nested')]);
    expect(nested.code, nested.stderr).toBe(0);
    expect(nested.stderr).not.toContain('matches nothing');
  });

  it('stats: logical bytes grow with an unchanged snapshot, unique and stored bytes do not; stored bytes are the pack files', async () => {
    const before = (await json<StatsJson>(['stats']))[0];
    const again = (await cliJson<{ snapshot: Snapshot }>(['snapshot', src, '--dataset', 'tree', '--host', 'ws1'], { server: server.addr })).snapshot;
    const after = (await json<StatsJson>(['stats']))[0];
    expect(after.snapshots).toBe(before.snapshots + 1);
    expect(after.logicalBytes).toBe(before.logicalBytes + Number(again.summary.bytes));
    expect(after.rawBytes).toBe(before.rawBytes);
    expect(after.chunks).toBe(before.chunks);
    expect(after.dedupRatio).toBeCloseTo(after.logicalBytes / after.rawBytes, 5);
    expect(after.dedupRatio).toBeGreaterThan(before.dedupRatio);
    // The 6 MiB of random bytes dominate: incompressible, so compression is close to 1.
    expect(after.compressionRatio).toBeGreaterThan(0.95);
    expect(after.compressionRatio).toBeLessThan(1.1);

    const packsDir = path.join(server.storeSpec.slice('file:'.length), 'repos/default/packs');
    let files = 0;
    let bytes = 0;
    for (const sub of await fs.readdir(packsDir)) {
      for (const f of await fs.readdir(path.join(packsDir, sub))) {
        files++;
        bytes += (await fs.stat(path.join(packsDir, sub, f))).size;
      }
    }
    expect({ packs: after.packs, storedBytes: after.storedBytes }).toEqual({ packs: files, storedBytes: bytes });

    const tree = (await json<StatsJson>(['stats', '--dataset', 'tree']))[0];
    expect(tree.snapshots).toBe(3);
    expect(tree.logicalBytes).toBe(Number(snapA.summary.bytes) + Number(snapB.summary.bytes) + Number(again.summary.bytes));
    expect(tree.rawBytes).toBe(after.rawBytes);
  });

  it('status: fresh, stale and never-backed-up pairs against an explicit now; exit 1 when any is stale', async () => {
    // A minute ahead of the clock, so the heartbeats sent below (stamped by the server) come before it.
    const now = Math.ceil(Date.now() / 1000) * 1000 + 60_000;
    const factory = new SnapshotFactory(conn);
    await factory.make({ dataset: 'fresh', host: 'gpu1', time: new Date(now - 60 * MINUTE) });
    await factory.make({ dataset: 'stale', host: 'gpu2', time: new Date(now - 7 * 24 * 60 * MINUTE) });
    await factory.make({ dataset: 'stale', host: 'gpu2', time: new Date(now - 3 * 24 * 60 * MINUTE) });
    await conn.unary('Heartbeat', { dataset: 'never', host: 'gpu3', ok: false, error: 'disk full: /data', durationSeconds: 2, snapshot: '' });
    await conn.unary('Heartbeat', { dataset: 'fresh', host: 'gpu1', ok: false, error: 'permission denied: /data/x', durationSeconds: 1, snapshot: '' });

    const started = Date.now();
    const r = await cli(['--json', 'status', '--now', new Date(now).toISOString()]);
    const statusMs = Date.now() - started;
    console.log(`status over ${HISTORY_SNAPSHOTS + 10} snapshots in 7 pairs: ${statusMs} ms (whole CLI run)`);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/stale \(older than 26h\) or never backed up: never@gpu3, stale@gpu2$/m);
    const rows = r.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as StatusJson);
    expect(rows.map((x) => `${x.dataset}@${x.host}:${x.state}`)).toEqual(['fifty@ws1:ok', 'fresh@gpu1:ok', 'hist@h0:ok', 'hist@h1:ok', 'never@gpu3:NEVER', 'stale@gpu2:STALE', 'tree@ws1:ok']);
    const by = (d: string) => rows.find((x) => x.dataset === d)!;
    expect(by('fresh')).toMatchObject({ ageSeconds: 3600, stale: false, failing: true, lastError: 'permission denied: /data/x' });
    expect(by('stale')).toMatchObject({ ageSeconds: 3 * 86400, stale: true, failing: false, lastError: '' });
    expect(by('never')).toMatchObject({ lastSnapshot: '', stale: true, failing: true, lastError: 'disk full: /data', lastSuccessTime: '' });

    // A success after the failure clears "failing" but keeps the last error for the record.
    await conn.unary('Heartbeat', { dataset: 'fresh', host: 'gpu1', ok: true, error: '', durationSeconds: 3, snapshot: '' });
    const fresh = await cli(['--json', 'status', '--now', new Date(now).toISOString(), '--dataset', 'fresh']);
    expect(fresh.code).toBe(0);
    expect(JSON.parse(fresh.stdout)).toMatchObject({ state: 'ok', failing: false, lastError: 'permission denied: /data/x' });

    expect((await cli(['status', '--now', new Date(now).toISOString(), '--dataset', 'stale', '--stale-after', '4d'])).code).toBe(0);
    const human = await cli(['status', '--now', new Date(now).toISOString()]);
    expect(human.code).toBe(1);
    const threeDaysAgo = new Date(now - 3 * 86_400_000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
    expect(human.stdout).toMatch(new RegExp(`^stale +gpu2 +[0-9a-f]{8} +${threeDaysAgo} +3d ago +.* STALE$`, 'm'));
    expect(human.stdout).toMatch(/^never +gpu3 +never .* NEVER +failing since .*: disk full: \/data$/m);

    const badBeat = conn.unary('Heartbeat', { dataset: 'x', host: 'y', ok: false, error: '', durationSeconds: 0, snapshot: '' });
    await expect(badBeat).rejects.toThrow(/must say what failed/);
  });

  it('bad references fail clearly: unknown id, unknown and ambiguous prefixes, paths not in the snapshot', async () => {
    const ids = (await json<HistoryRow>(['history'])).map((s) => s.id);
    const expectFail = async (args: string[], code: string, message: RegExp) => {
      const r = await cli(args);
      expect(r.code, `cairn ${args.join(' ')}`).toBe(1);
      expect(r.stderr).toContain(`cairn: ${code}: `);
      expect(r.stderr).toMatch(message);
    };
    const unknown = 'f'.repeat(63) + '0';
    expect(ids).not.toContain(unknown);
    const absent = ['0123456789', 'abcdef0123', 'fedcba9876'].find((p) => !ids.some((id) => id.startsWith(p)))!;
    // Over 2,000 snapshots every first hex digit is shared; take one that is.
    const digit = [...'0123456789abcdef'].find((d) => ids.filter((id) => id.startsWith(d)).length >= 2)!;

    const [ambiguous] = await Promise.all([
      cli(['ls', digit]),
      expectFail(['ls', unknown], 'NOT_FOUND', new RegExp(`snapshot ${unknown} does not exist`)),
      expectFail(['diff', snapA.id, unknown], 'NOT_FOUND', /does not exist/),
      expectFail(['cat', absent, 'notes.txt'], 'NOT_FOUND', new RegExp(`no snapshot id starts with ${absent}`)),
      expectFail(['ls', 'latest', '--dataset', 'tree', 'reports/nope.csv'], 'NOT_FOUND', /path reports\/nope\.csv does not exist in snapshot/),
      expectFail(['cat', snapB.id, 'reports/q2.csv'], 'NOT_FOUND', /path reports\/q2\.csv does not exist in snapshot/),
      expectFail(['cat', snapB.id, 'notes.txt/inside'], 'NOT_FOUND', /notes\.txt is a file, not a directory/),
      expectFail(['ls', 'latest', '--dataset', 'nosuch'], 'NOT_FOUND', /no snapshot for dataset nosuch/),
      expectFail(['ls', 'zz'], 'INVALID_ARGUMENT', /"zz" is not an id, an id prefix or "latest"/),
      expectFail(['ls', 'latest', '../etc'], 'INVALID_ARGUMENT', /contains "\.\."/),
      expectFail(['history', '--limit', 'abc'], 'INVALID_ARGUMENT', /--limit must be a whole number of zero or more, got "abc"/),
      expectFail(['history', '--limit', '1.9'], 'INVALID_ARGUMENT', /--limit must be a whole number of zero or more, got "1\.9"/),
    ]);
    expect(ambiguous.code).toBe(1);
    expect(ambiguous.stderr).toMatch(new RegExp(`INVALID_ARGUMENT: snapshot prefix ${digit} is ambiguous: it matches `));
    const listed = ambiguous.stderr.match(/[0-9a-f]{64}/g) ?? [];
    expect(listed.length).toBeGreaterThanOrEqual(2);
    expect(listed.every((id) => id.startsWith(digit) && ids.includes(id))).toBe(true);
  });
});

describe('find on a server shared with others', () => {
  let own: ServerHandle;
  beforeAll(async () => {
    own = await startServer();
  });
  afterAll(async () => {
    await own?.stop();
    cleanupTmp();
  });

  it('find answers a pattern built to make backtracking matchers spin, and the server keeps answering others', async () => {
    const dir = path.join(tmpDir(), 'names');
    // Names like these made the former matcher (picomatch) take 25 s each against such a pattern.
    for (let i = 0; i < 20; i++) await writeFile(path.join(dir, `${'a'.repeat(200 + i)}`), 'x');
    await writeFile(path.join(dir, `${'a'.repeat(100)}b`), 'y');
    await cliJson(['snapshot', dir, '--dataset', 'names', '--host', 'ws1'], { server: own.addr });
    const pattern = `${'*a'.repeat(12)}*b`;
    const [hits, others] = await Promise.all([jsonLines<{ path: string }>(['find', pattern, '--dataset', 'names'], own.addr), jsonLines<HistoryRow>(['history', '--dataset', 'names'], own.addr)]);
    expect(hits.map((h) => h.path)).toEqual([`${'a'.repeat(100)}b`]);
    expect(others).toHaveLength(1);
    const long = await runCli(['find', 'x'.repeat(5000)], { server: own.addr });
    expect(long.code).toBe(1);
    expect(long.stderr).toContain('INVALID_ARGUMENT: glob pattern of 5000 characters; the limit is 4096');
  });
});

describe('find after its client has gone', () => {
  it('stops reading trees within a snapshot once the client cancels, though it had nothing to send', async () => {
    const srv = await startInProcess();
    try {
      const repo = await srv.server.repository('default');
      // A root of 300 directories, each one file: a search that matches nothing reads 301 trees.
      const { sessionId } = await begin(srv.conn, 'wide');
      const subs = Array.from({ length: 300 }, (_, i) => flatTree({ [`f${i}.txt`]: Buffer.from(`file ${i}`) }));
      const dirs = subs.map((sub, i) => ({ ...emptyNode(`d${String(i).padStart(3, '0')}`, 'DIR'), mode: 0o755, subtree: sub.id }));
      const root = rawBlob(encodeTree(dirs), 'TREE');
      await upload(srv.conn, sessionId, [...subs.map((_, i) => rawBlob(Buffer.from(`file ${i}`))), ...subs, root]);
      await commit(srv.conn, sessionId, root);
      let reads = 0;
      const read = repo.readTree.bind(repo);
      repo.readTree = async (id: Buffer) => {
        reads++;
        await new Promise((r) => setTimeout(r, 10));
        return read(id);
      };
      const cli = spawn(process.execPath, [path.join(ROOT, 'dist/client/cli-start.js'), 'find', '*.parquet', '--dataset', 'wide'], { env: { ...process.env, CAIRN_SERVER: srv.addr }, stdio: 'ignore' });
      while (reads < 20) await new Promise((r) => setTimeout(r, 5));
      cli.kill('SIGINT');
      await new Promise((r) => cli.once('exit', r));
      const atCancel = reads;
      await new Promise((r) => setTimeout(r, 500));
      // Without the check the walk went on to all 301 trees (~3 s at 10 ms a read).
      expect(reads).toBeLessThanOrEqual(atCancel + 2);
      expect(reads).toBeLessThan(301);
    } finally {
      await srv.stop();
    }
  });
});

import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { CheckReply, PruneReply } from '../common/admin-messages.js';
import { hash, toHex } from '../common/hash.js';
import type { Snapshot } from '../common/messages.js';
import { emptyNode, encodeTree } from '../common/tree.js';
import { snapKey } from '../server/index-db.js';
import { setPruneCheckpointHook } from '../server/prune.js';
import { snapshotIndexKeys } from '../server/repository.js';
import { failure } from './auth-helpers.js';
import { backupFiles, begin, commit, findMissing, flatTree, rawBlob, restoredContents, sha256, startInProcess, upload, type InProcess } from './admin-helpers.js';
import { cleanupTmp, runCli, tmpDir } from './harness.js';
import { describeTree, randomBytes, writeFile } from './tree-gen.js';

/**
 * Backups running while prune runs, driven step by step through the gRPC API at prune's
 * dangerous points (checkpoint hooks of the in-process server): a chunk a session was told
 * exists must survive until the session commits, whenever the telling happened.
 */

const KiB = 1024;
const X = randomBytes(40 * KiB, 11); // the chunk a late session reuses
const Z = randomBytes(40 * KiB, 12); // garbage nobody asks for: proves the prune did remove things
const Y = randomBytes(40 * KiB, 13); // live in a kept snapshot
const NEW = randomBytes(10 * KiB, 14);

let srv: InProcess;

afterEach(async () => {
  setPruneCheckpointHook(undefined);
  await srv?.stop();
});
afterAll(() => cleanupTmp());

/** A repository where X and Z are referenced only by a forgotten snapshot. */
async function withGarbage(): Promise<InProcess> {
  srv = await startInProcess();
  await backupFiles(srv.conn, 'keep', { 'y.bin': Y });
  const old = await backupFiles(srv.conn, 'old', { 'x.bin': X, 'z.bin': Z });
  await srv.conn.unary('Forget', { snapshotIds: [old.id] });
  return srv;
}

const prune = () => srv.conn.unary<PruneReply>('Prune', { dryRun: false, maxUnused: Number.MIN_VALUE });

async function expectZRemoved(): Promise<void> {
  const { sessionId } = await begin(srv.conn, 'probe');
  expect(await findMissing(srv.conn, sessionId, [rawBlob(Z).id])).toEqual([toHex(rawBlob(Z).id)]);
  await srv.conn.unary('AbortBackup', { sessionId });
}

async function expectCheckClean(): Promise<void> {
  const r = await srv.conn.unary<CheckReply>('Check', { readData: true, readDataSubset: 0, readDataPart: '' });
  expect(r.problems).toEqual([]);
}

/** Commits a root that references X (asked about, not uploaded) and a new file; restores it. */
async function finishAndRestore(sessionId: string): Promise<void> {
  const root = flatTree({ 'x.bin': X, 'new.bin': NEW });
  await upload(srv.conn, sessionId, [rawBlob(NEW), root]);
  const snap = await commit(srv.conn, sessionId, root);
  expect(await restoredContents(srv.addr, snap.id)).toEqual({ 'new.bin': sha256(NEW), 'x.bin': sha256(X) });
}

describe('prune while backups run', () => {
  it('a chunk FindMissing reported present before the prune started survives it', async () => {
    await withGarbage();
    const { sessionId } = await begin(srv.conn, 'late');
    expect(await findMissing(srv.conn, sessionId, [rawBlob(X).id])).toEqual([]);
    const r = await prune();
    // Z and the forgotten snapshot's tree go; X is pinned.
    expect(Number(r.chunksRemoved)).toBe(2);
    await expectZRemoved();
    await finishAndRestore(sessionId);
    await expectCheckClean();
  });

  it('a chunk FindMissing reported present after the mark, before the sweep, is rescued', async () => {
    await withGarbage();
    let sessionId = '';
    setPruneCheckpointHook(async (point) => {
      if (point !== 'prune:after-mark' || sessionId) return;
      // The mark has passed without any pin on X: only the re-read under the lock can save it.
      sessionId = (await begin(srv.conn, 'late')).sessionId;
      expect(await findMissing(srv.conn, sessionId, [rawBlob(X).id])).toEqual([]);
    });
    const r = await prune();
    expect(sessionId).not.toBe('');
    expect(Number(r.chunksRemoved)).toBe(2);
    await expectZRemoved();
    await finishAndRestore(sessionId);
    await expectCheckClean();
  });

  it('an Upload of a condemned chunk after the mark pins it instead of storing a copy', async () => {
    await withGarbage();
    let sessionId = '';
    setPruneCheckpointHook(async (point) => {
      if (point !== 'prune:after-mark' || sessionId) return;
      sessionId = (await begin(srv.conn, 'late')).sessionId;
      await upload(srv.conn, sessionId, [rawBlob(X)]);
    });
    await prune();
    await expectZRemoved();
    await finishAndRestore(sessionId);
    await expectCheckClean();
  });

  it('a retried backup that stores an orphaned pack again byte for byte keeps it: prune does not delete the pack under the new snapshot', async () => {
    // The packs a backup stored before a kill -9 took the server down ahead of their index
    // entries: made on a scratch server, then copied in unindexed.
    const scratch = await startInProcess();
    await backupFiles(scratch.conn, 'retried', { 'x.bin': X, 'z.bin': Z });
    await scratch.stop();
    srv = await startInProcess();
    const packs = 'store/repos/default/packs';
    await fs.cp(path.join(scratch.dir, packs), path.join(srv.dir, packs), { recursive: true });
    let again: Snapshot | undefined;
    setPruneCheckpointHook(async (point) => {
      if (point !== 'prune:after-unindex' || again) return;
      // Prune has just called those packs orphans; the retry stores them again under the same keys.
      again = await backupFiles(srv.conn, 'retried', { 'x.bin': X, 'z.bin': Z });
    });
    const r = await prune();
    expect(again).toBeDefined();
    expect(await restoredContents(srv.addr, again!.id)).toEqual({ 'x.bin': sha256(X), 'z.bin': sha256(Z) });
    await expectCheckClean();
    expect(Number(r.packsDeleted)).toBe(0);
  });

  it('a condemned pack stored again by a session that has not committed yet is kept, and its commit restores', async () => {
    await withGarbage();
    let sessionId = '';
    setPruneCheckpointHook(async (point) => {
      if (point !== 'prune:after-old-index-deleted' || sessionId) return;
      // X and Z again, in the forgotten snapshot's order: they fill a pack (64 KiB here), which
      // is sealed and stored at once but indexed only at a flush.
      sessionId = (await begin(srv.conn, 'again')).sessionId;
      await upload(srv.conn, sessionId, [rawBlob(X), rawBlob(Z)]);
    });
    await prune();
    const root = flatTree({ 'x.bin': X, 'z.bin': Z });
    await upload(srv.conn, sessionId, [root]);
    const snap = await commit(srv.conn, sessionId, root);
    expect(await restoredContents(srv.addr, snap.id)).toEqual({ 'x.bin': sha256(X), 'z.bin': sha256(Z) });
    await expectCheckClean();
  });

  it('a snapshot object the index lost (a commit whose index write failed) is indexed again before prune marks, so its data stays', async () => {
    srv = await startInProcess();
    const repo = await srv.server.repository('default');
    const snap = await backupFiles(srv.conn, 'unindexed', { 'x.bin': X });
    await repo.index.batch([snapKey(snap.id), ...snapshotIndexKeys(snap)].map((key) => ({ type: 'del' as const, key })));
    await prune();
    expect(await restoredContents(srv.addr, snap.id)).toEqual({ 'x.bin': sha256(X) });
    await expectCheckClean();
  });

  it('BeginBackup looks its parent up under the lock: a parent forgotten while a prune waits for the lock is not handed out', async () => {
    srv = await startInProcess();
    const repo = await srv.server.repository('default');
    const lock = repo.gcLock as unknown as { writersWaiting: number };
    const C = randomBytes(20 * KiB, 21);
    // C is garbage when prune starts: only a forgotten snapshot had it.
    const old = await backupFiles(srv.conn, 'old', { 'c-old.bin': C });
    await srv.conn.unary('Forget', { snapshotIds: [old.id] });
    const sub = flatTree({ 'c.bin': C });
    const dir = emptyNode('sub', 'DIR');
    dir.mode = 0o755;
    dir.subtree = sub.id;
    const root = rawBlob(encodeTree([dir]), 'TREE');
    let began: Promise<{ sessionId: string; parent: Snapshot | null }> | undefined;
    let steps: Promise<void> | undefined;
    setPruneCheckpointHook(async (point) => {
      if (point !== 'prune:after-mark' || steps) return;
      // P is committed after the first mark, reusing C, so nothing but P keeps C.
      const p = await (async () => {
        const { sessionId } = await begin(srv.conn, 'exp');
        await findMissing(srv.conn, sessionId, [hash(C)]);
        await upload(srv.conn, sessionId, [sub, root]);
        return commit(srv.conn, sessionId, root);
      })();
      // An Upload is inside the lock when prune asks for it: prune waits, and so does what comes after.
      let release = () => undefined as void;
      const held = new Promise<void>((resolve) => (release = resolve));
      void repo.gcLock.shared(() => held);
      steps = (async () => {
        while (lock.writersWaiting === 0) await new Promise((r) => setTimeout(r, 5));
        began = begin(srv.conn, 'exp');
        await new Promise((r) => setTimeout(r, 50));
        await srv.conn.unary('Forget', { snapshotIds: [p.id] });
        release();
      })();
    });
    await prune();
    await steps;
    const b = await began!;
    // P was forgotten before the lookup could run: the client starts from no parent and uploads what it has.
    expect(b.parent).toBeNull();
    const missing = new Set(await findMissing(srv.conn, b.sessionId, [hash(C), sub.id, root.id]));
    await upload(srv.conn, b.sessionId, [rawBlob(C), sub, root].filter((blob) => missing.has(toHex(blob.id))));
    const snap = await commit(srv.conn, b.sessionId, root);
    expect(await restoredContents(srv.addr, snap.id)).toEqual({ 'sub/c.bin': sha256(C) });
    await expectCheckClean();
  });

  it('a commit still waiting for the lock when its session is aborted records no snapshot', async () => {
    srv = await startInProcess();
    const repo = await srv.server.repository('default');
    const lock = repo.gcLock as unknown as { waiters: unknown[] };
    const { sessionId } = await begin(srv.conn, 'gone');
    const root = flatTree({ 'new.bin': NEW });
    await upload(srv.conn, sessionId, [rawBlob(NEW), root]);
    let release = () => undefined as void;
    const held = new Promise<void>((resolve) => (release = resolve));
    // A prune's exclusive hold, as while it unindexes: the commit queues behind it.
    const pruning = repo.gcLock.exclusive(() => held);
    const committing = failure(commit(srv.conn, sessionId, root));
    while (lock.waiters.length === 0) await new Promise((r) => setTimeout(r, 5));
    await srv.conn.unary('AbortBackup', { sessionId });
    release();
    await pruning;
    expect(await committing).toBe(`FAILED_PRECONDITION: backup session ${sessionId} is unknown, finished or expired; start a new backup`);
    const listed: Snapshot[] = [];
    for await (const s of srv.conn.stream<Snapshot>('ListSnapshots', { dataset: 'gone' })) listed.push(s);
    expect(listed).toEqual([]);
  });

  it('a snapshot forgotten while check runs is not reported as missing its object', async () => {
    srv = await startInProcess();
    const repo = await srv.server.repository('default');
    await backupFiles(srv.conn, 'keep', { 'y.bin': Y });
    const gone = await backupFiles(srv.conn, 'gone', { 'x.bin': X });
    // check reads the index as it was when it began; the forget lands before it reaches `gone`.
    const get = repo.store.get.bind(repo.store);
    let forgotten = false;
    repo.store.get = async (key: string) => {
      if (key === `snapshots/${gone.id}` && !forgotten) {
        forgotten = true;
        await srv.conn.unary('Forget', { snapshotIds: [gone.id] });
      }
      return get(key);
    };
    const r = await srv.conn.unary<CheckReply>('Check', { readData: false, readDataSubset: 0, readDataPart: '' });
    expect(forgotten).toBe(true);
    expect(r.problems).toEqual([]);
    expect(r.snapshotsChecked).toBe('1');
  });

  it('after the condemned chunks are unindexed, FindMissing says missing and the client uploads again', async () => {
    await withGarbage();
    let sessionId = '';
    setPruneCheckpointHook(async (point) => {
      if (point !== 'prune:after-unindex' || sessionId) return;
      sessionId = (await begin(srv.conn, 'late')).sessionId;
      expect(await findMissing(srv.conn, sessionId, [rawBlob(X).id])).toEqual([toHex(rawBlob(X).id)]);
      // Uploaded while the old copy's pack is still waiting to be deleted: the new copy is what stays.
      await upload(srv.conn, sessionId, [rawBlob(X)]);
    });
    await prune();
    await expectZRemoved();
    await finishAndRestore(sessionId);
    await expectCheckClean();
  });

  it('a tree stored as a data blob (a file holding its bytes) loses its verified mark when prune removes it', async () => {
    srv = await startInProcess();
    const tree = flatTree({ 'x.bin': X });
    // A file whose bytes are the tree's encoding comes first: the tree's id is stored as data.
    const copy = await backupFiles(srv.conn, 'copies', { 'tree.bin': tree.data });
    const dirs = await begin(srv.conn, 'dirs');
    await upload(srv.conn, dirs.sessionId, [rawBlob(X)]);
    const snap = await commit(srv.conn, dirs.sessionId, tree);
    expect(await restoredContents(srv.addr, snap.id)).toEqual({ 'x.bin': sha256(X) });
    await srv.conn.unary('Forget', { snapshotIds: [copy.id, snap.id] });
    await prune();
    // The tree is gone from the store: a commit naming it without uploading it must be refused,
    // not waved through by a verified mark left from the earlier commit.
    const late = await begin(srv.conn, 'dirs');
    await upload(srv.conn, late.sessionId, [rawBlob(X)]);
    expect(await failure(commit(srv.conn, late.sessionId, tree))).toBe(`FAILED_PRECONDITION: commit references unknown tree ${toHex(tree.id)} (directory /); upload it first`);
  });

  it("a session's parent root stored as a data blob still keeps everything below it through a prune", async () => {
    srv = await startInProcess();
    const tree = flatTree({ 'x.bin': X, 'z.bin': Z });
    await backupFiles(srv.conn, 'copies', { 'tree.bin': tree.data });
    const first = await begin(srv.conn, 'src');
    await upload(srv.conn, first.sessionId, [rawBlob(X), rawBlob(Z)]);
    const parent = await commit(srv.conn, first.sessionId, tree);
    const reply = await begin(srv.conn, 'src');
    expect(reply.parent?.id).toBe(parent.id);
    await srv.conn.unary('Forget', { snapshotIds: [parent.id] });
    const r = await prune();
    // x.bin and z.bin are reachable only through the pinned parent root, a data blob here.
    expect(Number(r.chunksRemoved)).toBe(0);
    const snap = await commit(srv.conn, reply.sessionId, tree);
    expect(await restoredContents(srv.addr, snap.id)).toEqual({ 'x.bin': sha256(X), 'z.bin': sha256(Z) });
    await expectCheckClean();
  });

  it("a session reusing its parent's chunk lists keeps them although the parent was forgotten", async () => {
    srv = await startInProcess();
    const parent = await backupFiles(srv.conn, 'p', { 'x.bin': X, 'z.bin': Z });
    const reply = await begin(srv.conn, 'p');
    expect(reply.parent?.id).toBe(parent.id);
    await srv.conn.unary('Forget', { snapshotIds: [parent.id] });
    const r = await prune();
    // Nothing may go: every blob is reachable from the session's parent root, which is pinned.
    expect(Number(r.chunksRemoved)).toBe(0);
    // x.bin unchanged: its chunk list comes from the parent tree, never asked about.
    const root = flatTree({ 'x.bin': X, 'new.bin': NEW });
    await upload(srv.conn, reply.sessionId, [rawBlob(NEW), root]);
    const snap = await commit(srv.conn, reply.sessionId, root);
    expect(await restoredContents(srv.addr, snap.id)).toEqual({ 'new.bin': sha256(NEW), 'x.bin': sha256(X) });
    await expectCheckClean();
  });

  it('real snapshots taken while prune runs over and over all restore byte-identical', async () => {
    await withGarbage();
    const base = tmpDir();
    const data = path.join(base, 'data');
    for (let i = 0; i < 24; i++) await writeFile(path.join(data, `d${i % 3}`, `f${i}.bin`), randomBytes(150 * KiB + i * 1000, 100 + i));
    const client = runCli(['--json', 'snapshot', data, '--dataset', 'busy', '--host', 'h'], { server: srv.addr });
    let done = false;
    void client.then(() => (done = true));
    let prunes = 0;
    while (!done || prunes === 0) {
      await prune();
      prunes++;
    }
    const r = await client;
    expect(r.code, r.stderr).toBe(0);
    const id = (JSON.parse(r.stdout) as { snapshot: { id: string } }).snapshot.id;
    const target = path.join(base, 'out');
    const rr = await runCli(['restore', '--snapshot', id, target], { server: srv.addr });
    expect(rr.code, rr.stderr).toBe(0);
    expect(await describeTree(target)).toEqual(await describeTree(data));
    await expectCheckClean();
  });
});

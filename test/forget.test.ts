import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { commit, flatTree, startInProcess, upload } from './admin-helpers.js';
import { cleanupTmp, cliJson, runCli, startServer, tmpDir, type ServerHandle } from './harness.js';
import { randomBytes, writeFile } from './tree-gen.js';

/** forget, protect and policies end to end: the CLI against a real server, snapshots with explicit times. */

interface Decision {
  id: string;
  time: string;
  keep: boolean;
  reasons: string[];
}
interface ForgetOut {
  dryRun: boolean;
  kept: number;
  removed: number;
  decisions: Decision[];
}

let server: ServerHandle;
let data: string;
const ids: Record<string, string> = {};
let seed = 1;

// Newest last; restic's rules on these: see the expectations below.
const TIMES: Record<string, string> = {
  a: '2024-01-10T10:00:00Z',
  b: '2024-02-05T10:00:00Z',
  c: '2024-02-20T10:00:00Z',
  d: '2024-03-01T09:00:00Z',
  e: '2024-03-01T18:00:00Z',
  f: '2024-03-02T12:00:00Z',
  g: '2024-03-03T12:00:00Z',
};

async function snapshot(dataset: string, time: string): Promise<string> {
  await writeFile(path.join(data, 'run.log'), randomBytes(2000, seed++));
  const r = await cliJson<{ snapshot: { id: string } }>(['snapshot', data, '--dataset', dataset, '--host', 'h', '--time', time], { server: server.addr });
  return r.snapshot.id;
}

async function history(dataset: string): Promise<string[]> {
  const r = await runCli(['--json', 'history', '--dataset', dataset], { server: server.addr });
  expect(r.code, r.stderr).toBe(0);
  return r.stdout.trim().split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { id: string }).id);
}

const POLICY = ['--keep-last', '2', '--keep-daily', '3', '--keep-monthly', '3'];

beforeAll(async () => {
  server = await startServer();
  data = path.join(tmpDir(), 'data');
  await writeFile(path.join(data, 'weights.bin'), randomBytes(50_000, 99));
  for (const [name, time] of Object.entries(TIMES)) ids[name] = await snapshot('exp', time);
  ids.other = await snapshot('other', '2024-01-01T00:00:00Z');
});

afterAll(async () => {
  await server.stop();
  cleanupTmp();
});

describe('forget through the CLI', () => {
  it('dry run: every kept snapshot carries its reasons, a protected one stays, nothing is removed', async () => {
    const p = await cliJson<{ id: string; protected: boolean }>(['protect', ids.b.slice(0, 10)], { server: server.addr });
    expect(p).toMatchObject({ id: ids.b, protected: true });

    const r = await cliJson<ForgetOut>(['forget', '--dataset', 'exp', ...POLICY, '--dry-run'], { server: server.addr });
    expect(r).toMatchObject({ dryRun: true, kept: 6, removed: 1 });
    const byName = Object.fromEntries(Object.entries(ids).map(([name, id]) => [id, name]));
    expect(r.decisions.map((d) => [byName[d.id], d.keep, d.reasons])).toEqual([
      ['g', true, ['last snapshot', 'daily snapshot', 'monthly snapshot']],
      ['f', true, ['last snapshot', 'daily snapshot']],
      ['e', true, ['daily snapshot']],
      // Same day as e, which is newer: the daily bucket is taken.
      ['d', false, []],
      ['c', true, ['monthly snapshot']],
      // Same month as c; only its protection keeps it.
      ['b', true, ['protected']],
      ['a', true, ['monthly snapshot']],
    ]);
    expect(await history('exp')).toHaveLength(7);

    const human = await runCli(['forget', '--dataset', 'exp', ...POLICY, '--dry-run'], { server: server.addr });
    expect(human.code, human.stderr).toBe(0);
    expect(human.stdout).toContain('exp@h: keep 6, remove 1');
    expect(human.stdout).toMatch(new RegExp(`${ids.g.slice(0, 8)}\\s+2024-03-03 12:00:00Z\\s+keep\\s+last snapshot, daily snapshot, monthly snapshot`));
    expect(human.stdout).toMatch(new RegExp(`${ids.d.slice(0, 8)}\\s+2024-03-01 09:00:00Z\\s+remove`));
    expect(human.stdout).toContain('would remove 1 snapshot, keep 6 (dry run: nothing changed)');
  });

  it('removes what the policy does not keep, and only in the dataset named', async () => {
    const r = await cliJson<ForgetOut>(['forget', '--dataset', 'exp', ...POLICY], { server: server.addr });
    expect(r.decisions.filter((d) => !d.keep).map((d) => d.id)).toEqual([ids.d]);
    const left = await history('exp');
    expect(left).toHaveLength(6);
    expect(left).not.toContain(ids.d);
    expect(await history('other')).toEqual([ids.other]);
  });

  it('a protected snapshot cannot be forgotten by id until it is unprotected', async () => {
    const refused = await runCli(['forget', ids.b], { server: server.addr });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(`snapshot ${ids.b} is protected`);
    expect(await history('exp')).toContain(ids.b);

    await cliJson(['unprotect', ids.b], { server: server.addr });
    // An id outside the filter given with it is refused, and nothing is forgotten.
    const elsewhere = await runCli(['forget', ids.b, '--dataset', 'other'], { server: server.addr });
    expect(elsewhere.code).toBe(1);
    expect(elsewhere.stderr).toContain(`NOT_FOUND: snapshot ${ids.b} is of dataset exp, not other: nothing forgotten`);
    expect(await history('exp')).toContain(ids.b);
    const r = await cliJson<ForgetOut>(['forget', ids.b], { server: server.addr });
    expect(r).toMatchObject({ kept: 0, removed: 1 });
    expect(await history('exp')).not.toContain(ids.b);
  });

  it('a stored policy is applied after each commit of its dataset', async () => {
    const set = await cliJson<{ keepLast: number; dataset: string }>(['policy', 'set', '--dataset', 'exp', '--keep-last', '2'], { server: server.addr });
    expect(set).toMatchObject({ dataset: 'exp', keepLast: 2 });
    const shown = await runCli(['policy', 'show', '--dataset', 'exp'], { server: server.addr });
    expect(shown.stdout).toContain('retention policy of dataset exp: keep-last 2');

    const newest = await snapshot('exp', '2024-03-04T12:00:00Z');
    expect(await history('exp')).toEqual([newest, ids.g]);
    // Another dataset's commit does not apply exp's policy, and exp's does not touch it.
    const other2 = await snapshot('other', '2024-01-02T00:00:00Z');
    expect(await history('other')).toEqual([other2, ids.other]);

    await cliJson(['policy', 'clear', '--dataset', 'exp'], { server: server.addr });
    const gone = await runCli(['policy', 'show', '--dataset', 'exp'], { server: server.addr });
    expect(gone.code).toBe(1);
    expect(gone.stderr).toContain('NOT_FOUND: no retention policy is stored for dataset exp');
    await snapshot('exp', '2024-03-05T12:00:00Z');
    expect(await history('exp')).toHaveLength(3);
  });

  it('a stored keep-tag list keeps the snapshot carrying all its tags, and a tag that cannot exist is refused', async () => {
    const opts = { server: server.addr };
    await cliJson(['policy', 'set', '--dataset', 'tagged', '--keep-tag', 'daily,important'], opts);
    await writeFile(path.join(data, 'run.log'), randomBytes(2000, seed++));
    const both = await cliJson<{ snapshot: { id: string } }>(['snapshot', data, '--dataset', 'tagged', '--host', 'h', '--tag', 'daily', '--tag', 'important'], opts);
    await writeFile(path.join(data, 'run.log'), randomBytes(2000, seed++));
    await cliJson(['snapshot', data, '--dataset', 'tagged', '--host', 'h', '--tag', 'daily'], opts);
    // The second commit applied the policy: only the snapshot with both tags stays.
    expect(await history('tagged')).toEqual([both.snapshot.id]);

    for (const args of [['policy', 'set', '--dataset', 'tagged'], ['forget', '--dataset', 'tagged', '--dry-run']]) {
      const bad = await runCli([...args, '--keep-tag', 'daily, important'], opts);
      expect(bad.code).toBe(1);
      expect(bad.stderr).toContain('INVALID_ARGUMENT: keep_tag "daily, important": tag " important" is not valid');
    }
    expect(await history('tagged')).toEqual([both.snapshot.id]);
    await cliJson(['policy', 'clear', '--dataset', 'tagged'], opts);
  });

  it('refuses a forget with neither keep options nor ids, and bad keep values', async () => {
    const none = await runCli(['forget', '--dataset', 'exp'], { server: server.addr });
    expect(none.code).toBe(1);
    expect(none.stderr).toContain('give keep options');
    const bad = await runCli(['forget', '--dataset', 'exp', '--keep-within', '3x'], { server: server.addr });
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('keep_within: invalid duration "3x"');
    expect(await history('exp')).toHaveLength(3);
  });
});

describe('forget over many snapshots', () => {
  it('answers within the message limit: every decision counted, as many listed as fit in 32 MiB', async () => {
    const srv = await startInProcess();
    try {
      // 2,000 tags of 128 characters: ~260 KB a decision, so 270 of them pass the 65 MiB limit.
      const tags = Array.from({ length: 2000 }, (_, i) => `${i}-`.padEnd(128, 't'));
      const root = flatTree({});
      for (let i = 0; i < 270; i++) {
        const { sessionId } = await srv.conn.unary<{ sessionId: string }>('BeginBackup', { dataset: 'fleet', host: 'h', paths: ['/data'], tags, time: new Date(Date.UTC(2024, 0, 1, 0, i)).toISOString() });
        if (i === 0) await upload(srv.conn, sessionId, [root]);
        await commit(srv.conn, sessionId, root);
      }
      const out = await cliJson<ForgetOut & { decisionsOmitted: number }>(['forget', '--dataset', 'fleet', '--keep-last', '1', '--dry-run'], { server: srv.addr });
      expect(out).toMatchObject({ kept: 1, removed: 269 });
      expect(out.decisions.length + out.decisionsOmitted).toBe(270);
      expect(out.decisions.length).toBeGreaterThan(100);
      expect(out.decisionsOmitted).toBeGreaterThan(0);
      const human = await runCli(['forget', '--dataset', 'fleet', '--keep-last', '1', '--dry-run'], { server: srv.addr });
      expect(human.stdout).toContain(`(${out.decisionsOmitted} more decisions not listed: the reply lists at most 32 MiB of them)`);
      expect(human.stdout).toContain('would remove 269 snapshots, keep 1 (dry run: nothing changed)');
    } finally {
      await srv.stop();
    }
  }, 120_000);
});

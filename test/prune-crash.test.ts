import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { restored, writeVersions, type CheckOut, type PruneOut } from './admin-helpers.js';
import { cleanupTmp, cliJson, runCli, startServer, tmpDir } from './harness.js';
import { describeTree } from './tree-gen.js';

/**
 * kill -9 of the server at each step boundary of a prune (CAIRN_TEST_CRASH_AT, see prune.ts),
 * then restart: check finds nothing missing, every snapshot restores byte-identical, and the
 * next prune finishes the job.
 */

let template: string;
let versions: string[];
const kept: Array<{ id: string; dir: string }> = [];

beforeAll(async () => {
  template = tmpDir();
  versions = await writeVersions(tmpDir());
  const server = await startServer({ store: `file:${path.join(template, 'store')}`, indexDir: path.join(template, 'index'), args: ['--pack-size', '256KiB'] });
  const ids: string[] = [];
  for (const [i, dir] of versions.entries()) {
    ids.push((await cliJson<{ snapshot: { id: string } }>(['snapshot', dir, '--dataset', 'exp', '--host', 'h', '--time', `2024-05-0${i + 1}T00:00:00Z`], { server: server.addr })).snapshot.id);
  }
  await cliJson(['forget', ids[0]], { server: server.addr });
  kept.push({ id: ids[1], dir: versions[1] }, { id: ids[2], dir: versions[2] });
  await server.stop();
});

afterAll(() => cleanupTmp());

const POINTS = ['prune:after-mark', 'prune:after-unindex', 'prune:after-repack', 'prune:after-index', 'prune:after-old-index-deleted', 'prune:mid-delete'];

describe('kill -9 during prune', () => {
  it.each(POINTS)('at %s: check passes, every snapshot restores, the next prune finishes the job', async (point) => {
    const base = tmpDir();
    await fs.cp(template, base, { recursive: true });
    const where = { store: `file:${path.join(base, 'store')}`, indexDir: path.join(base, 'index') };

    const doomed = await startServer({ ...where, env: { CAIRN_TEST_CRASH_AT: point } });
    const interrupted = await runCli(['prune', '--max-unused', '0%'], { server: doomed.addr });
    await doomed.exited;
    expect(doomed.proc.signalCode).toBe('SIGKILL');
    expect(interrupted.code).not.toBe(0);

    const server = await startServer(where);
    try {
      const opts = { server: server.addr };
      const check = await cliJson<CheckOut>(['check', '--read-data'], opts);
      expect(check.problems).toEqual([]);
      expect(check.snapshotsChecked).toBe(2);
      for (const k of kept) expect(await restored(server.addr, k.id)).toEqual(await describeTree(k.dir));

      await cliJson<PruneOut>(['prune', '--max-unused', '0%'], opts);
      const left = await cliJson<PruneOut>(['prune', '--dry-run', '--max-unused', '0%'], opts);
      // Nothing unindexed, unreferenced or partly used is left behind by the crash.
      expect(left).toMatchObject({ packsDeleted: 0, packsRewritten: 0, chunksRemoved: 0 });
      expect((await cliJson<CheckOut>(['check', '--read-data'], opts)).problems).toEqual([]);
    } finally {
      await server.stop();
    }
  });
});

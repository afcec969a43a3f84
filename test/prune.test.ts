import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { dirBytes, restored, writeVersions, type CheckOut, type PruneOut } from './admin-helpers.js';
import { cleanupTmp, cliJson, runCli, startServer, tmpDir } from './harness.js';
import { describeTree } from './tree-gen.js';

afterAll(() => cleanupTmp());

describe('prune', () => {
  it('after forgetting all but one snapshot the store shrinks, max-unused decides repacking, the rest restores byte-identical', async () => {
    const base = tmpDir();
    const server = await startServer({ args: ['--pack-size', '256KiB'] });
    const opts = { server: server.addr };
    try {
      const versions = await writeVersions(base);
      const ids: string[] = [];
      for (const [i, dir] of versions.entries()) {
        ids.push((await cliJson<{ snapshot: { id: string } }>(['snapshot', dir, '--dataset', 'exp', '--host', 'h', '--time', `2024-05-0${i + 1}T00:00:00Z`], opts)).snapshot.id);
      }
      const packs = path.join(server.storeSpec.slice('file:'.length), 'repos/default/packs');
      const before = await dirBytes(packs);

      await cliJson(['forget', '--dataset', 'exp', '--keep-last', '1'], opts);
      const tolerant = await cliJson<PruneOut>(['prune', '--dry-run', '--max-unused', 'unlimited'], opts);
      const strict = await cliJson<PruneOut>(['prune', '--dry-run', '--max-unused', '0%'], opts);
      // Packs of v1/v2-only files go either way; mixed packs are rewritten only when no unused space is tolerated.
      expect(tolerant.packsDeleted).toBeGreaterThan(0);
      expect(tolerant).toMatchObject({ dryRun: true, packsRewritten: 0, packsDeleted: strict.packsDeleted, chunksRemoved: strict.chunksRemoved });
      expect(tolerant.bytesUnusedKept).toBeGreaterThan(0);
      expect(strict.packsRewritten).toBeGreaterThan(0);
      expect(strict.bytesUnusedKept).toBe(0);
      expect(await dirBytes(packs)).toBe(before);

      const real = await cliJson<PruneOut>(['prune', '--max-unused', '0%'], opts);
      expect(real).toMatchObject({ dryRun: false, packsDeleted: strict.packsDeleted, packsRewritten: strict.packsRewritten, chunksRemoved: strict.chunksRemoved, bytesUnusedKept: 0 });
      expect(real.requests.delete).toBeGreaterThanOrEqual(real.packsDeleted + real.packsRewritten);
      const after = await dirBytes(packs);
      // v3 alone is ~1 MiB of the ~1.7 MiB the three versions stored.
      expect(after).toBeLessThan(before * 0.7);
      expect(after).toBeGreaterThan(1000 * 1024);
      // Freed bytes as reported match the store's shrinkage (new pack footers aside).
      expect(Math.abs(before - after - real.bytesFreed)).toBeLessThan(1024);

      expect(await restored(server.addr, ids[2])).toEqual(await describeTree(versions[2]));
      const check = await cliJson<CheckOut>(['check', '--read-data'], opts);
      expect(check).toMatchObject({ ok: true, snapshotsChecked: 1, problems: [] });
      expect(check.packsRead).toBe(check.packsChecked);

      const again = await cliJson<PruneOut>(['prune', '--dry-run', '--max-unused', '0%'], opts);
      expect(again).toMatchObject({ packsDeleted: 0, packsRewritten: 0, chunksRemoved: 0, bytesFreed: 0 });
      const human = await runCli(['prune'], opts);
      expect(human.code, human.stderr).toBe(0);
      expect(human.stdout).toMatch(/packs deleted\s+0\n/);
      expect(await dirBytes(packs)).toBe(after);
    } finally {
      await server.stop();
    }
  });
});

import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { hash, toHex } from '../common/hash.js';
import { encodeTrailer, parsePack } from '../common/pack-format.js';
import { FileStore } from '../server/file-store.js';
import type { CheckOut, PruneOut } from './admin-helpers.js';
import { cleanupTmp, cliJson, runCli, startServer, tmpDir, type ServerHandle } from './harness.js';
import { listAll } from './store-contract.js';
import { describeTree, randomBytes, writeFile } from './tree-gen.js';

afterAll(() => cleanupTmp());

const MiB = 1024 * 1024;

/** Mount namespaces let an unprivileged test mount a small tmpfs; where they are off, the disk test cannot run. */
const canMountTmpfs = spawnSync('unshare', ['-rm', 'sh', '-c', 'mount -t tmpfs -o size=1m tmpfs "$1"', 'sh', os.tmpdir()], { stdio: 'ignore' }).status === 0;

async function filesUnder(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { withFileTypes: true, recursive: true }).catch(() => []);
  return entries.filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
}

const temporaries = async (dir: string) => (await filesUnder(dir)).filter((f) => path.basename(f).includes('.tmp-'));

async function snapshot(server: ServerHandle, dir: string, dataset: string): Promise<string> {
  return (await cliJson<{ snapshot: { id: string } }>(['snapshot', dir, '--dataset', dataset, '--host', 'h'], { server: server.addr })).snapshot.id;
}

async function restoresAs(server: ServerHandle, id: string, src: string): Promise<void> {
  const target = path.join(tmpDir(), 'restored');
  expect((await runCli(['restore', '--snapshot', id, target], { server: server.addr })).code).toBe(0);
  expect(await describeTree(target)).toEqual(await describeTree(src));
}

describe('packs streamed to the folder store', () => {
  it('a snapshot writes packs named by the BLAKE3 of their bytes, blobs back to back and then a trailer listing them', async () => {
    const server = await startServer({ args: ['--pack-size', '256KiB'] });
    try {
      const src = path.join(tmpDir(), 'data');
      await writeFile(path.join(src, 'big.bin'), randomBytes(3 * MiB, 1));
      await writeFile(path.join(src, 'text.txt'), 'compressible line\n'.repeat(50_000));
      for (let i = 0; i < 150; i++) await writeFile(path.join(src, `small/f${i}.bin`), randomBytes(500 + i * 40, 10 + i));
      const id = await snapshot(server, src, 'exp');

      const packFiles = await filesUnder(path.join(server.storeSpec.slice('file:'.length), 'repos/default/packs'));
      expect(packFiles.length).toBeGreaterThan(2);
      let blobs = 0;
      for (const file of packFiles) {
        expect(path.basename(file)).not.toContain('.tmp-');
        const bytes = await fs.readFile(file);
        expect(toHex(hash(bytes))).toBe(path.basename(file));
        const entries = parsePack(bytes, file);
        let end = 0;
        for (const e of entries) {
          expect(e.offset).toBe(end);
          end += e.storedLength;
        }
        expect(bytes.subarray(end).equals(encodeTrailer(entries))).toBe(true);
        blobs += entries.length;
      }
      // --read-data re-hashes every pack and every blob in it.
      const check = await cliJson<CheckOut>(['check', '--read-data'], { server: server.addr });
      expect(check).toMatchObject({ ok: true, packsChecked: packFiles.length, packsRead: packFiles.length, blobsRead: blobs });
      await restoresAs(server, id, src);
    } finally {
      await server.stop();
    }
  });

  it('a temporary left by a killed writer is no object: list, check and prune ignore it, and the next start removes it', async () => {
    const base = tmpDir();
    const root = path.join(base, 'store');
    const opts = { store: `file:${root}`, indexDir: path.join(base, 'index') };
    let server = await startServer(opts);
    const src = path.join(base, 'data');
    await writeFile(path.join(src, 'a.bin'), randomBytes(2 * MiB, 2));
    const id = await snapshot(server, src, 'exp');
    // What a server killed mid-pack leaves: a writer's temporary that was never committed.
    const objects = new FileStore(root);
    const dead = await objects.openWriter('repos/default/packs');
    await dead.write(randomBytes(3 * MiB, 3));
    const [tmp] = await temporaries(root);
    expect(tmp).toBeDefined();
    // The lease names its holder's pid, whose number of digits differs between two servers.
    const objectsNow = async () => (await listAll(objects, '')).map((o) => (o.key.endsWith('locks/writer') ? { key: o.key } : o));
    const listed = await objectsNow();
    expect(listed.filter((o) => o.key.includes('.tmp-'))).toEqual([]);

    const check = await cliJson<CheckOut>(['check', '--read-data'], { server: server.addr });
    expect(check.ok).toBe(true);
    expect((await cliJson<PruneOut>(['prune'], { server: server.addr })).packsDeleted).toBe(0);
    await restoresAs(server, id, src);
    await server.stop();

    server = await startServer(opts);
    try {
      await restoresAs(server, id, src);
      expect(await temporaries(root)).toEqual([]);
      expect(server.logs.some((l) => l.includes('removed the temporary files'))).toBe(true);
      expect(await objectsNow()).toEqual(listed);
    } finally {
      await dead.abort();
      await server.stop();
    }
  });

  it.skipIf(!canMountTmpfs)('a full disk fails the snapshot with RESOURCE_EXHAUSTED, frees the pack temporary, and its blobs are uploaded again', async () => {
    const base = tmpDir();
    const mnt = path.join(base, 'disk');
    await fs.mkdir(mnt);
    // The server alone sees a 3 MiB tmpfs at mnt (its own mount namespace); its index stays on the real disk.
    const server = await startServer({
      store: `file:${mnt}/store`,
      indexDir: path.join(base, 'index'),
      args: ['--pack-size', '4MiB'],
      wrap: ['unshare', '-rm', 'sh', '-c', 'mount -t tmpfs -o size=3m tmpfs "$0" && exec "$@"', mnt],
    });
    const storeRoot = path.join('/proc', String(server.proc.pid), 'root', mnt, 'store');
    try {
      const src = path.join(base, 'data');
      await writeFile(path.join(src, 'a.bin'), randomBytes(2 * MiB, 4));
      await writeFile(path.join(src, 'b.bin'), randomBytes(2 * MiB, 5));
      const full = await runCli(['snapshot', src, '--dataset', 'exp', '--host', 'h'], { server: server.addr });
      expect(full.code).toBe(1);
      expect(full.stderr).toMatch(/RESOURCE_EXHAUSTED: .*disk full/);
      expect(await filesUnder(storeRoot)).not.toEqual([]);
      expect(await temporaries(storeRoot)).toEqual([]);

      // a.bin alone fits only because the failed pack's temporary is gone, and restores only if
      // its chunks, lost with that pack, were uploaded again rather than taken as present.
      const part = path.join(base, 'part');
      await fs.mkdir(part);
      await fs.copyFile(path.join(src, 'a.bin'), path.join(part, 'a.bin'));
      const id = await snapshot(server, part, 'exp');
      await restoresAs(server, id, part);
    } finally {
      await server.stop();
    }
  });
});

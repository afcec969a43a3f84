import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cleanupTmp, cliJson, ROOT, runCli, startServer, tmpDir } from './harness.js';
import { describeTree, randomBytes, writeFile } from './tree-gen.js';
import { inspectStore, storeBackends } from './backends.js';
import type { ObjectStore } from '../server/object-store.js';

const MiB = 1024 * 1024;

async function countObjects(store: ObjectStore, sub: string): Promise<number> {
  let n = 0;
  for await (const _ of store.list(`repos/default/${sub}/`)) n++;
  return n;
}

async function until(cond: () => Promise<boolean>, what: string, timeoutMs = 60_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

interface SnapOut {
  snapshot: { id: string };
}

afterAll(() => cleanupTmp());

describe.each(storeBackends())('kill -9 on the $name store', (backend) => {
  afterAll(async () => backend.cleanup?.());

  it('server killed mid-upload: earlier snapshots restore, the interrupted one is absent, a new one succeeds', async () => {
    const base = tmpDir();
    const given = await backend.serverOptions();
    const opts = { ...given, store: given.store ?? `file:${path.join(base, 'store')}`, indexDir: path.join(base, 'index'), args: [...(given.args ?? []), '--pack-size', '4MiB', '--lease-ttl', '2s'] };
    const objects = inspectStore(opts);
    let server = await startServer(opts);
    const small = path.join(base, 'small');
    await writeFile(path.join(small, 'a.txt'), 'first snapshot');
    await writeFile(path.join(small, 'b.bin'), randomBytes(2 * MiB, 1));
    const first = await cliJson<SnapOut>(['snapshot', small, '--dataset', 'crash', '--host', 'h'], { server: server.addr });

    const big = path.join(base, 'big');
    for (let i = 0; i < 6; i++) await writeFile(path.join(big, `part${i}.bin`), randomBytes(40 * MiB, 100 + i));
    const packsBefore = await countObjects(objects, 'packs');
    const client = runCli(['snapshot', big, '--dataset', 'crash', '--host', 'h'], { server: server.addr });
    // Kill once the upload is visibly under way: some packs of the second snapshot are stored.
    await until(async () => (await countObjects(objects, 'packs')) >= packsBefore + 3, 'packs of the interrupted upload');
    await server.kill9();
    const interrupted = await client;
    expect(interrupted.code).toBe(1);
    expect(interrupted.stderr).toMatch(/UNAVAILABLE|CANCELLED|INTERNAL/);

    server = await startServer(opts);
    const history = (await runCli(['--json', 'history', '--dataset', 'crash'], { server: server.addr })).stdout.trim().split('\n');
    expect(history.map((l) => (JSON.parse(l) as { id: string }).id)).toEqual([first.snapshot.id]);
    if (opts.store.startsWith('file:')) {
      // The killed server's open packs were temporaries; reopening the repository removed them.
      const files = await fs.readdir(opts.store.slice('file:'.length), { recursive: true });
      expect(files.filter((f) => f.includes('.tmp-'))).toEqual([]);
    }

    const restored = path.join(base, 'restored-first');
    expect((await runCli(['restore', '--snapshot', first.snapshot.id, restored], { server: server.addr })).code).toBe(0);
    expect(await describeTree(restored)).toEqual(await describeTree(small));

    const again = await cliJson<SnapOut>(['snapshot', big, '--dataset', 'crash', '--host', 'h'], { server: server.addr });
    const restoredBig = path.join(base, 'restored-big');
    expect((await runCli(['restore', '--snapshot', again.snapshot.id, restoredBig], { server: server.addr })).code).toBe(0);
    expect(await describeTree(restoredBig)).toEqual(await describeTree(big));
    await server.stop();
  });

  it('client killed mid-upload: nothing is recorded and the next snapshot succeeds', async () => {
    const server = await startServer(await backend.serverOptions());
    const dir = path.join(tmpDir(), 'data');
    for (let i = 0; i < 4; i++) await writeFile(path.join(dir, `f${i}.bin`), randomBytes(40 * MiB, 200 + i));
    const proc = spawn(process.execPath, [path.join(ROOT, 'dist/client/cli-start.js'), 'snapshot', dir, '--dataset', 'ckill', '--host', 'h'], {
      env: { ...process.env, CAIRN_SERVER: server.addr },
      stdio: 'ignore',
    });
    await until(async () => server.logs.some((l) => l.includes('"backup started"')), 'the backup to start');
    await new Promise((r) => setTimeout(r, 300));
    proc.kill('SIGKILL');
    await new Promise((r) => proc.once('exit', r));
    const hist = await runCli(['--json', 'history', '--dataset', 'ckill'], { server: server.addr });
    expect(hist.stdout.trim()).toBe('');
    const snap = await cliJson<SnapOut>(['snapshot', dir, '--dataset', 'ckill', '--host', 'h'], { server: server.addr });
    const target = path.join(tmpDir(), 'restored');
    expect((await runCli(['restore', '--snapshot', snap.snapshot.id, target], { server: server.addr })).code).toBe(0);
    expect(await describeTree(target)).toEqual(await describeTree(dir));
    await server.stop();
  });
});

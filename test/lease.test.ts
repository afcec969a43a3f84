import { spawnSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cleanupTmp, runCli, startServer, tmpDir } from './harness.js';
import { inspectStore, storeBackends } from './backends.js';
import { LEASE_KEY } from '../server/writer-lease.js';
import { writeFile } from './tree-gen.js';

afterAll(() => cleanupTmp());

describe.each(storeBackends())('one writer per repository on the $name store', (backend) => {
  afterAll(async () => backend.cleanup?.());

  async function sharedOptions() {
    const given = await backend.serverOptions();
    const base = tmpDir();
    return { ...given, store: given.store ?? `file:${path.join(base, 'store')}`, indexDir: path.join(base, 'index-a'), args: [...(given.args ?? []), '--lease-ttl', '3s'] };
  }

  it('a second server refuses while the first lives, and takes over once the first is killed', async () => {
    const opts = await sharedOptions();
    const first = await startServer(opts);
    const second = { ...opts, indexDir: path.join(tmpDir(), 'index-b') };
    await expect(startServer(second)).rejects.toThrow(new RegExp(`FAILED_PRECONDITION: repository .* is held by another writer: ${os.hostname()} pid ${first.proc.pid}`));
    await first.kill9();
    const taker = await startServer(second);
    const dir = path.join(tmpDir(), 'd');
    await writeFile(path.join(dir, 'f'), 'after takeover');
    expect((await runCli(['snapshot', dir, '--dataset', 'lease', '--host', 'h'], { server: taker.addr })).code).toBe(0);
    await taker.stop();
  });

  it('refuses a lease TTL past what its timers can wait', async () => {
    const opts = await sharedOptions();
    await expect(startServer({ ...opts, args: [...opts.args.filter((a) => a !== '--lease-ttl' && a !== '3s'), '--lease-ttl', '30d'] })).rejects.toThrow(/INVALID_ARGUMENT: --lease-ttl must be from 1s to 1d, got 2592000s/);
  });

  it('says at start when the store ignores conditional writes, so the lease is advisory', async () => {
    const server = await startServer(await sharedOptions());
    const warned = server.logs.some((l) => l.includes('this store ignores conditional writes (If-None-Match)'));
    await server.stop();
    // s3rver overwrites on If-None-Match: *; a folder store's link(2) and a real S3 honour it.
    expect(warned).toBe(backend.name === 's3rver');
  });

  it('a lease under this host name from another boot or pid namespace is honoured although its pid is not running here', async () => {
    const opts = await sharedOptions();
    const store = inspectStore(opts);
    const key = `repos/default/${LEASE_KEY}`;
    // A pid no process here has: on this machine it would mean the holder was gone.
    const gone = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout;
    const twin = { holder: 'twin', host: os.hostname(), pid: Number(gone), expires: new Date(Date.now() + 60_000).toISOString() };
    await store.put(key, Buffer.from(JSON.stringify({ ...twin, machine: 'another-boot pid:[1]' })));
    await expect(startServer(opts)).rejects.toThrow(new RegExp(`held by another writer: ${os.hostname()} pid ${gone} \\(lease twin`));
    // A record without the machine's identity (an older server's) is waited out the same way.
    await store.put(key, Buffer.from(JSON.stringify(twin)));
    await expect(startServer(opts)).rejects.toThrow(/held by another writer/);
  });

  it('a lease from another host is honoured until it expires, then taken over', async () => {
    const opts = await sharedOptions();
    const store = inspectStore(opts);
    const key = `repos/default/${LEASE_KEY}`;
    const foreign = (expires: Date) => Buffer.from(JSON.stringify({ holder: 'elsewhere', host: 'other-host', pid: 1, expires: expires.toISOString() }));
    await store.put(key, foreign(new Date(Date.now() + 60_000)));
    await expect(startServer(opts)).rejects.toThrow(/held by another writer: other-host pid 1 \(lease elsewhere/);
    await store.put(key, foreign(new Date(Date.now() - 1000)));
    const server = await startServer(opts);
    expect(server.logs.some((l) => l.includes('taking over the writer lease'))).toBe(true);
    const held = JSON.parse((await store.get(key)).toString('utf8')) as { host: string; pid: number };
    expect(held).toMatchObject({ host: os.hostname(), pid: server.proc.pid });
    await server.stop();
    // A clean stop releases the lease for the next writer at once.
    await expect(store.head(key)).resolves.toBeUndefined();
  });

  it('a lease object that is not a lease (a put cut short) is taken over like an expired one', async () => {
    const opts = await sharedOptions();
    const store = inspectStore(opts);
    const key = `repos/default/${LEASE_KEY}`;
    for (const junk of ['', '{"holder":"half', '{"holder":"x","expires":"never"}']) {
      await store.put(key, Buffer.from(junk));
      const server = await startServer(opts);
      expect(server.logs.some((l) => l.includes('taking over the writer lease') && l.includes('unreadable'))).toBe(true);
      expect(JSON.parse((await store.get(key)).toString('utf8'))).toMatchObject({ host: os.hostname(), pid: server.proc.pid });
      await server.stop();
    }
  });

  it('a SIGTERM while the server is starting stops it cleanly once started, releasing the lease', async () => {
    const opts = await sharedOptions();
    const store = inspectStore(opts);
    let signalled = false;
    const server = await startServer({
      ...opts,
      onLog(line, proc) {
        // The lease is taken mid start-up, before the server says it is ready.
        if (!signalled && line.includes('writer lease acquired')) {
          signalled = true;
          proc.kill('SIGTERM');
        }
      },
    });
    expect(await server.exited).toBe(0);
    expect(server.logs.some((l) => l.includes('shutting down'))).toBe(true);
    await expect(store.head(`repos/default/${LEASE_KEY}`)).resolves.toBeUndefined();
  });
});

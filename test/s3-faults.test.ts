import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Connection } from '../client/connection.js';
import type { HelloReply } from '../common/messages.js';
import type { RequestCounts } from '../server/object-store.js';
import { cleanupTmp, cliJson, startServer, tmpDir } from './harness.js';
import { startFaultProxy } from './s3/fault-proxy.js';
import { startS3rver } from './s3/s3rver.js';
import { describeTree, randomBytes, writeFile } from './tree-gen.js';

const MiB = 1024 * 1024;
const PACK = 16 * MiB;

afterAll(() => cleanupTmp());

async function storeCounts(addr: string): Promise<RequestCounts> {
  const conn = new Connection({ server: addr });
  try {
    return JSON.parse((await conn.unary<HelloReply>('Hello', {})).storeRequests) as RequestCounts;
  } finally {
    conn.close();
  }
}

describe('an S3 store that fails a share of requests', () => {
  it('a 500 MiB snapshot and its restore succeed byte-identical; the counters show the retries and few PUTs', async () => {
    const s3 = await startS3rver();
    // 503 SlowDown, 500, connections dropped before and after forwarding, and delays.
    const proxy = await startFaultProxy({ target: s3.endpoint, faultRate: 0.1, seed: 7, delayMs: 200 });
    const server = await startServer({
      store: `s3://${s3.bucket}/faults`,
      args: ['--endpoint', proxy.endpoint, '--region', 'us-east-1', '--s3-path-style'],
      env: { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey },
    });
    try {
      const dir = path.join(tmpDir(), 'data');
      for (let i = 0; i < 10; i++) await writeFile(path.join(dir, `shard-${i}.bin`), randomBytes(50 * MiB, 300 + i));
      const before = await storeCounts(server.addr);
      const snap = await cliJson<{ snapshot: { id: string }; stats: { bytesRead: number } }>(['snapshot', dir, '--dataset', 'faulty', '--host', 'h'], { server: server.addr });
      expect(snap.stats.bytesRead).toBe(500 * MiB);
      const afterBackup = await storeCounts(server.addr);
      // Bills are per request: one PUT per ~16 MiB pack, plus index segment, snapshot and lease refreshes.
      const puts = afterBackup.put - before.put - (afterBackup.retries - before.retries);
      expect(puts).toBeLessThanOrEqual(Math.ceil((500 * MiB) / PACK) + 8);

      const target = path.join(tmpDir(), 'restored');
      await cliJson(['restore', '--snapshot', snap.snapshot.id, target], { server: server.addr });
      expect(await describeTree(target)).toEqual(await describeTree(dir));

      const after = await storeCounts(server.addr);
      const injected = proxy.counters.slowDown + proxy.counters.internalError + proxy.counters.dropBeforeForward + proxy.counters.dropAfterForward;
      expect(injected).toBeGreaterThan(0);
      expect(after.retries - before.retries).toBeGreaterThan(0);
      expect(after.get - afterBackup.get).toBeGreaterThan(0);
    } finally {
      await server.stop();
      await proxy.stop();
      await s3.stop();
    }
  }, 600_000);
});

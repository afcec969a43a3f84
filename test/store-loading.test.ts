import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '..');
const run = promisify(execFile);

/**
 * Opens a store in a fresh Node process, as cairn-server does, and reports which store it got
 * and whether the AWS SDK was loaded. A fresh process, because a test worker may have loaded
 * the SDK for another test already.
 */
async function openInFreshProcess(spec: string): Promise<{ description: string; sdkLoaded: boolean }> {
  const script = `
    import { createRequire } from 'node:module';
    import { openStore } from ${JSON.stringify(path.join(ROOT, 'dist/server/server.js'))};
    const store = await openStore(${JSON.stringify(spec)}, { endpoint: 'http://127.0.0.1:9', region: 'us-east-1' });
    const sdkLoaded = Object.keys(createRequire(import.meta.url).cache).some((k) => k.includes('@aws-sdk/client-s3'));
    console.log(JSON.stringify({ description: store.description, sdkLoaded }));
    await store.close();
  `;
  const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], { cwd: ROOT });
  return JSON.parse(stdout) as { description: string; sdkLoaded: boolean };
}

describe('store loading', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'cairn-store-loading-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('a folder store does not load the AWS SDK', async () => {
    const r = await openInFreshProcess(`file:${dir}`);
    expect(r.description).toBe(`file:${dir}`);
    expect(r.sdkLoaded).toBe(false);
  });

  it('an S3 store loads it (the check above can see it)', async () => {
    const r = await openInFreshProcess('s3://cairn-bucket/some/prefix');
    expect(r.description).toContain('cairn-bucket');
    expect(r.sdkLoaded).toBe(true);
  });
});

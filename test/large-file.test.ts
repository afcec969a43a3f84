import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cleanupTmp, cliJson, startServer, tmpDir } from './harness.js';
import { randomBytes } from './tree-gen.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const LIMIT = 300 * MiB;

async function sha256(file: string): Promise<string> {
  const h = createHash('sha256');
  const fh = await fs.open(file, 'r');
  const buf = Buffer.allocUnsafe(8 * MiB);
  for (;;) {
    const { bytesRead } = await fh.read(buf, 0, buf.length, null);
    if (bytesRead === 0) break;
    h.update(buf.subarray(0, bytesRead));
  }
  await fh.close();
  return h.digest('hex');
}

/** VmHWM: the peak resident set of a live process, from the kernel. */
async function peakRssOf(pid: number): Promise<number> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8');
  const kb = /VmHWM:\s+(\d+) kB/.exec(status);
  if (!kb) throw new Error('no VmHWM in /proc status');
  return Number(kb[1]) * 1024;
}

afterAll(() => cleanupTmp());

describe('memory does not grow with file size', () => {
  it('backs up and restores a 5 GiB file with client and server each under 300 MiB RSS', async () => {
    const server = await startServer();
    const dir = path.join(tmpDir(), 'big');
    await fs.mkdir(dir);
    const file = path.join(dir, 'checkpoint.bin');
    // Mostly sparse (zeros read back fast), with distinct random regions so the file is many
    // different chunks, not one chunk repeated.
    const fh = await fs.open(file, 'w');
    await fh.truncate(5 * GiB);
    for (let off = 0, i = 0; off < 5 * GiB; off += 128 * MiB, i++) await fh.write(randomBytes(8 * MiB, 1000 + i), 0, 8 * MiB, off);
    await fh.close();

    const snap = await cliJson<{ snapshot: { id: string }; stats: { bytesRead: number }; peakRssBytes: number }>(['snapshot', dir, '--dataset', 'big', '--host', 'h'], { server: server.addr });
    expect(snap.stats.bytesRead).toBe(5 * GiB);
    expect(snap.peakRssBytes).toBeLessThan(LIMIT);

    const target = path.join(tmpDir(), 'restored');
    const rest = await cliJson<{ stats: { bytes: number }; peakRssBytes: number }>(['restore', '--snapshot', snap.snapshot.id, target], { server: server.addr });
    expect(rest.stats.bytes).toBe(5 * GiB);
    expect(rest.peakRssBytes).toBeLessThan(LIMIT);

    expect(await peakRssOf(server.proc.pid!)).toBeLessThan(LIMIT);
    await server.stop();
    expect(await sha256(path.join(target, 'checkpoint.bin'))).toBe(await sha256(file));
  }, 600_000);
});

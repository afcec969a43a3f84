import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanupTmp, runCli, startServer, tmpDir, type ServerHandle } from './harness.js';
import { randomBytes, writeFile } from './tree-gen.js';

const MiB = 1024 * 1024;

/** Random over sixteen letters: zstd halves it, so it is stored compressed and inflated on restore. */
function compressible(len: number, seed: number): Buffer {
  return randomBytes(len, seed).map((b) => 0x61 + (b & 0x0f));
}

/** Small files are written by a worker thread from reused chunk memory; large files from reused slabs. */
describe('restore writes', () => {
  let server: ServerHandle;
  const cli = (args: string[]) => runCli(args, { server: server.addr });

  beforeAll(async () => {
    server = await startServer();
  });
  afterAll(async () => {
    await server?.stop();
    cleanupTmp();
  });

  it('restores many small and several multi-chunk files byte for byte through reused buffers', async () => {
    const src = path.join(tmpDir(), 'mixed');
    const expected = new Map<string, Buffer>();
    for (let i = 0; i < 600; i++) expected.set(`small/d${i % 7}/f${i}.bin`, compressible(1 + ((i * 7919) % 40_000), i));
    for (let i = 0; i < 3; i++) expected.set(`large/l${i}.bin`, i === 0 ? randomBytes(20 * MiB, 1000) : compressible(20 * MiB + i, 1000 + i));
    for (const [rel, data] of expected) await writeFile(path.join(src, rel), data);
    expect((await cli(['snapshot', src, '--dataset', 'mixed', '--host', 'h'])).code).toBe(0);
    const target = path.join(tmpDir(), 'mixed-out');
    const r = await cli(['restore', '--dataset', 'mixed', target]);
    expect(r.code, r.stderr).toBe(0);
    for (const [rel, data] of expected) expect((await fs.readFile(path.join(target, rel))).equals(data), rel).toBe(true);
  });

  it('a write that comes up short (a full disk, a file size limit) fails the restore and leaves no truncated file', async () => {
    const src = path.join(tmpDir(), 'big');
    const data = randomBytes(3 * MiB, 77);
    await writeFile(path.join(src, 'weights.bin'), data);
    expect((await cli(['snapshot', src, '--dataset', 'big', '--host', 'h'])).code).toBe(0);
    // A KiB short of the whole file: the last write is the one that comes up short.
    const limitKiB = data.length / 1024 - 1;
    const target = path.join(tmpDir(), 'big-out');
    const r = await runCli(['restore', '--dataset', 'big', target], { server: server.addr, fileSizeLimitKiB: limitKiB });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^cairn: INTERNAL: .*EFBIG/m);
    expect(await fs.readdir(target)).toEqual([]);
  });

  it('reports a small file the writer thread cannot put in place, and leaves no temporary file', async () => {
    const src = path.join(tmpDir(), 'blocked');
    await writeFile(path.join(src, 'a.txt'), 'alpha');
    await writeFile(path.join(src, 'b.txt'), 'bravo');
    expect((await cli(['snapshot', src, '--dataset', 'blocked', '--host', 'h'])).code).toBe(0);
    const target = path.join(tmpDir(), 'blocked-out');
    // A non-empty directory where a file goes: the final rename onto it fails.
    await writeFile(path.join(target, 'b.txt', 'inside'), 'x');
    const r = await cli(['restore', '--dataset', 'blocked', '--overwrite', 'always', target]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/b\.txt/);
    expect((await fs.readdir(target)).filter((n) => n.includes('.cairn-'))).toEqual([]);
    expect(await fs.readFile(path.join(target, 'b.txt', 'inside'), 'utf8')).toBe('x');
  });
});

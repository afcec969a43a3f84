import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { blake3 } from '@napi-rs/blake-hash';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobDecompressor } from '../common/compression.js';
import type { SmallFile, SmallFileReader as Reader } from '../client/small-file-reader.js';

/** The reader runs worker threads, loaded from the build (`npm test` builds first). */
async function reader(level: number | undefined, maxFileSize: number, workers?: number): Promise<Reader> {
  const { SmallFileReader } = (await import('../dist/client/small-file-reader.js')) as typeof import('../client/small-file-reader.js');
  return new SmallFileReader(level, maxFileSize, workers);
}

const KiB = 1024;

describe('SmallFileReader', () => {
  let dir: string;
  const open: Reader[] = [];
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'cairn-small-reader-'));
  });
  afterAll(async () => {
    await Promise.all(open.map((r) => r.close()));
    await rm(dir, { recursive: true, force: true });
  });

  async function make(level: number | undefined, maxFileSize = 64 * KiB, workers?: number): Promise<Reader> {
    const r = await reader(level, maxFileSize, workers);
    open.push(r);
    return r;
  }

  function expectRead(f: SmallFile): Extract<SmallFile, { kind: 'read' }> {
    if (f.kind !== 'read') throw new Error(`expected a read file, got ${JSON.stringify(f)}`);
    return f;
  }

  it('reads, hashes and compresses a batch: every id is the BLAKE3 of the file and the stored bytes give it back', async () => {
    const files = [
      { name: 'text.json', data: Buffer.from(JSON.stringify({ loss: Array.from({ length: 500 }, (_, i) => i * 0.5) })) },
      { name: 'random.bin', data: blake3(Buffer.from('seed')).subarray(0, 32) },
      { name: 'one', data: Buffer.from('x') },
      { name: 'empty', data: Buffer.alloc(0) },
    ];
    for (const f of files) await writeFile(path.join(dir, f.name), f.data);
    const r = await make(3);
    const pending = files.map((f) => r.read(path.join(dir, f.name), f.data.length));
    r.flush();
    const got = await Promise.all(pending);
    const inflate = new BlobDecompressor();
    got.forEach((g, i) => {
      const read = expectRead(g);
      const want = files[i].data;
      expect(read.rawLength).toBe(want.length);
      if (want.length > 0) expect(read.id.equals(blake3(want))).toBe(true);
      const back = read.compressed ? inflate.decompress(read.data, read.rawLength, files[i].name) : read.data;
      expect(Buffer.from(back).equals(want)).toBe(true);
      read.done();
    });
    // The JSON compresses; 32 random bytes and one byte do not, and are stored raw.
    expect(got.map((g) => expectRead(g).compressed)).toEqual([true, false, false, false]);
  });

  it('only reads and hashes when given no level (a dry run)', async () => {
    const data = Buffer.from('a'.repeat(4000));
    await writeFile(path.join(dir, 'aaaa'), data);
    const r = await make(undefined);
    const p = r.read(path.join(dir, 'aaaa'), data.length);
    r.flush();
    const read = expectRead(await p);
    expect(read.compressed).toBe(false);
    expect(read.data.equals(data)).toBe(true);
    expect(read.id.equals(blake3(data))).toBe(true);
    read.done();
  });

  it('says grew for a file larger than its stat size, and gives the error of one that cannot be read', async () => {
    await writeFile(path.join(dir, 'growing'), Buffer.alloc(5000, 1));
    const r = await make(3);
    const grew = r.read(path.join(dir, 'growing'), 4000);
    const missing = r.read(path.join(dir, 'no-such-file'), 10);
    const shrunk = r.read(path.join(dir, 'growing'), 6000);
    r.flush();
    expect(await grew).toEqual({ kind: 'grew' });
    const err = await missing;
    expect(err.kind).toBe('error');
    expect(err.kind === 'error' && err.error.code).toBe('ENOENT');
    // A file shorter than its stat is recorded as what was read.
    const s = expectRead(await shrunk);
    expect(s.rawLength).toBe(5000);
    s.done();
  });

  it('holds the walk while its batches are full and unconsumed, and goes on once they are done', async () => {
    const names = Array.from({ length: 1200 }, (_, i) => `f${i}`);
    for (const n of names) await writeFile(path.join(dir, n), `file ${n}`);
    const r = await make(3, 64 * KiB, 1);
    const results: Array<Promise<SmallFile>> = [];
    let blocked = false;
    for (const n of names) {
      const room = r.room();
      const won = await Promise.race([room.then(() => true), new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 200))]);
      if (!won) {
        blocked = true;
        break;
      }
      results.push(r.read(path.join(dir, n), `file ${n}`.length));
    }
    // One worker, two batches of 256 files in flight unconsumed, a third full and waiting:
    // the walk may not queue more.
    expect(blocked).toBe(true);
    expect(results.length).toBe(3 * 256 + 1);
    const firstBatch = await Promise.all(results.slice(0, 256));
    for (const f of firstBatch) expectRead(f).done();
    await r.room();
    r.flush();
    for (let i = 256; i < results.length; i++) {
      const read = expectRead(await results[i]);
      expect(read.data.toString()).toBe(`file ${names[i]}`);
      read.done();
    }
  });

  it('gives an error, not a thread blocked forever, for a FIFO or a symlink that took a file\'s place', async () => {
    const fifo = path.join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    await symlink(path.join(dir, 'one'), path.join(dir, 'link'));
    const r = await make(3);
    const pending = [r.read(fifo, 10), r.read(path.join(dir, 'link'), 1)];
    r.flush();
    const [f, l] = await Promise.all(pending);
    expect(f.kind === 'error' && f.error.message).toMatch(/no longer a regular file/);
    expect(l.kind === 'error' && l.error.code).toBe('ELOOP');
  });

  it('fits a small file larger than the usual batch buffer whole (a repository with a large minimum chunk)', async () => {
    const big = Buffer.concat(Array.from({ length: 160 }, (_, i) => blake3(Buffer.from(`block ${i}`)))); // 5 KiB, incompressible
    const data = Buffer.concat(Array.from({ length: 1024 }, () => big)).subarray(0, 5 * 1024 * 1024);
    // Repeated blocks would compress: flip bytes so zstd finds nothing to save.
    for (let i = 0; i < data.length; i += 4096) data.writeUInt32LE(i * 2654435761 >>> 0, i);
    await writeFile(path.join(dir, 'five-mib'), data);
    const r = await make(undefined, 8 * 1024 * 1024);
    const p = r.read(path.join(dir, 'five-mib'), data.length);
    r.flush();
    const read = expectRead(await p);
    expect(read.data.length).toBe(data.length);
    expect(read.data.equals(data)).toBe(true);
    expect(read.id.equals(blake3(data))).toBe(true);
    read.done();
  });

  it('rejects the reads still pending when closed', async () => {
    const r = await reader(3, 64 * KiB);
    const pending = r.read(path.join(dir, 'one'), 1);
    await r.close();
    await expect(pending).rejects.toThrow(/closed/);
  });

  it('refuses a file above its size limit', async () => {
    const r = await make(3, 1000);
    await expect(r.read(path.join(dir, 'big'), 1001)).rejects.toThrow(/1001 bytes is not a small file/);
  });
});

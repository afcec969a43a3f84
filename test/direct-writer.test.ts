import { randomBytes } from 'node:crypto';
import { constants, promises as fs } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { DirectFiles, pageAlignedBuffer, WRITE_BUFFER } from '../server/direct-writer.js';
import { directIoChecked, openFlags } from './direct-io.js';

// Linux filesystems that take O_DIRECT and check its alignment (this machine's /tmp is ext4).
const direct = await directIoChecked(os.tmpdir());

describe('DirectFiles', () => {
  let dir: string;
  beforeEach(async () => {
    // Resolved, so /proc/self/fd's links (always real paths) compare equal to ours.
    dir = await fs.realpath(await mkdtemp(path.join(os.tmpdir(), 'cairn-direct-')));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** Writes `data` in pieces of `piece` bytes and returns the file's bytes after finish. */
  async function writeAll(files: DirectFiles, name: string, data: Buffer, piece: number): Promise<Buffer> {
    const file = path.join(dir, name);
    const w = await files.create(file, 0o600);
    for (let at = 0; at < data.length; at += piece) await w.write(data.subarray(at, Math.min(data.length, at + piece)));
    const fh = await w.finish();
    await fh.close();
    return fs.readFile(file);
  }

  it.runIf(direct)('writes with O_DIRECT where the filesystem takes it, and a refused write goes through the page cache with the same bytes, and later files do not try', async () => {
    // The kernel refuses O_DIRECT from memory off a block boundary with EINVAL, as some
    // filesystems (FUSE, larger blocks) refuse it whatever the memory: buffers one byte off a
    // page make the refusal the kernel's own.
    const files = new DirectFiles((bytes) => Buffer.alloc(bytes + 1).subarray(1));
    const first = await files.create(path.join(dir, 'a'), 0o600);
    expect(first.isDirect).toBe(true);
    expect((await openFlags(path.join(dir, 'a'))) & constants.O_DIRECT).toBe(constants.O_DIRECT);
    const data = randomBytes(3 * WRITE_BUFFER + 5);
    await first.write(data);
    expect(first.isDirect).toBe(false);
    await (await first.finish()).close();
    expect((await fs.readFile(path.join(dir, 'a'))).equals(data)).toBe(true);

    const next = await files.create(path.join(dir, 'b'), 0o600);
    expect(next.isDirect).toBe(false);
    expect((await openFlags(path.join(dir, 'b'))) & constants.O_DIRECT).toBe(0);
    await next.close();
  });

  it('files written one after another and side by side share buffers without mixing bytes, and at most four pairs are kept', async () => {
    let allocated = 0;
    const files = new DirectFiles((bytes) => {
      allocated++;
      return pageAlignedBuffer(bytes);
    });
    const sizes = [WRITE_BUFFER * 2 + 1, 10, WRITE_BUFFER - 3, 3 * WRITE_BUFFER];
    const datas = sizes.map((n) => randomBytes(n));
    // Side by side: each writer holds its own pair of buffers while the others write.
    const back = await Promise.all(datas.map((d, i) => writeAll(files, `side-${i}`, d, 300_001)));
    back.forEach((b, i) => expect(b.equals(datas[i]!), `side-${i}`).toBe(true));
    expect(allocated).toBe(sizes.length);
    // One after another: each takes the buffers the last one gave back, with its bytes still in them.
    for (const [i, d] of datas.entries()) {
      expect((await writeAll(files, `seq-${i}`, d, 65_537)).equals(d), `seq-${i}`).toBe(true);
    }
    expect(allocated).toBe(sizes.length);
    // A burst of six: four pairs were kept, so two are new, and of the six only four are kept again.
    const burst = Array.from({ length: 6 }, () => randomBytes(WRITE_BUFFER + 7));
    await Promise.all(burst.map((d, i) => writeAll(files, `burst-${i}`, d, 500_000)));
    expect(allocated).toBe(sizes.length + 2);
    await Promise.all(burst.map((d, i) => writeAll(files, `again-${i}`, d, 500_000)));
    expect(allocated).toBe(sizes.length + 4);
  });

  it('close after a partial write closes the descriptor and leaves the file for the caller to remove', async () => {
    const fds = () => fs.readdir('/proc/self/fd').then((l) => l.length);
    const files = new DirectFiles();
    const before = await fds();
    const w = await files.create(path.join(dir, 'partial'), 0o600);
    await w.write(randomBytes(WRITE_BUFFER + 10));
    await w.close();
    expect(await fds()).toBe(before);
    await expect(fs.stat(path.join(dir, 'partial'))).resolves.toBeTruthy();
  });

  it('create refuses a file that exists (O_EXCL) and leaves it as it was', async () => {
    const files = new DirectFiles();
    await fs.writeFile(path.join(dir, 'there'), 'keep');
    await expect(files.create(path.join(dir, 'there'), 0o600)).rejects.toMatchObject({ code: 'EEXIST' });
    expect(await fs.readFile(path.join(dir, 'there'), 'utf8')).toBe('keep');
  });

  it('a filesystem that refuses O_DIRECT at open, after creating the file as Linux does, gets a buffered file all the same', async () => {
    const realOpen = fs.open.bind(fs);
    const spy = vi.spyOn(fs, 'open').mockImplementation(async (file, flags, mode) => {
      if (typeof flags === 'number' && flags & constants.O_DIRECT) {
        // What tmpfs before Linux 6.6 does: the O_CREAT has happened when EINVAL comes back.
        await (await realOpen(file, flags & ~constants.O_DIRECT, mode)).close();
        throw Object.assign(new Error('EINVAL: invalid argument, open'), { code: 'EINVAL' });
      }
      return realOpen(file, flags, mode);
    });
    try {
      const files = new DirectFiles();
      const data = randomBytes(WRITE_BUFFER + 4097);
      expect((await writeAll(files, 'refused-at-open', data, 100_000)).equals(data)).toBe(true);
      const next = await files.create(path.join(dir, 'next'), 0o600);
      expect(next.isDirect).toBe(false);
      await next.close();
      expect(spy.mock.calls.filter(([, flags]) => typeof flags === 'number' && flags & constants.O_DIRECT)).toHaveLength(1);
    } finally {
      spy.mockRestore();
    }
  });

  it('without aligned memory (a refused address-space reservation) files are written through the page cache, and the unaligned buffers are not kept', async () => {
    let refuse = true;
    const files = new DirectFiles((bytes) => {
      if (refuse) throw new RangeError('WebAssembly.Memory(): could not allocate memory');
      return pageAlignedBuffer(bytes);
    });
    const w = await files.create(path.join(dir, 'plain'), 0o600);
    expect(w.isDirect).toBe(false);
    expect((await openFlags(path.join(dir, 'plain'))) & constants.O_DIRECT).toBe(0);
    const data = randomBytes(2 * WRITE_BUFFER + 1);
    await w.write(data);
    await (await w.finish()).close();
    expect((await fs.readFile(path.join(dir, 'plain'))).equals(data)).toBe(true);
    // Memory to be had again: the next file is direct, not handed the unaligned pair back.
    refuse = false;
    const next = await files.create(path.join(dir, 'next'), 0o600);
    // Past a buffer's worth, so a write has gone to the kernel: an unaligned pair would have been refused there.
    await next.write(randomBytes(2 * WRITE_BUFFER + 1));
    expect(next.isDirect).toBe(direct);
    await next.close();
  });

  it('close during a write waits for it before the buffers go back to the pool', async () => {
    const files = new DirectFiles();
    const w = await files.create(path.join(dir, 'closing'), 0o600);
    const order: string[] = [];
    const writing = w.write(randomBytes(3 * WRITE_BUFFER + 1)).then(() => order.push('write'));
    await w.close().then(() => order.push('close'));
    await writing;
    expect(order).toEqual(['write', 'close']);
    // The pair went back once: the next writer gets it, and its bytes come out whole.
    const data = randomBytes(2 * WRITE_BUFFER + 3);
    expect((await writeAll(files, 'after', data, 1_000_000)).equals(data)).toBe(true);
  });

  it('refuses a write after finish: its buffers may be another writer\'s by then', async () => {
    const files = new DirectFiles();
    const w = await files.create(path.join(dir, 'done'), 0o600);
    await w.write(Buffer.from('abc'));
    await (await w.finish()).close();
    await expect(w.write(Buffer.from('more'))).rejects.toThrow(/after finish/);
    expect(await fs.readFile(path.join(dir, 'done'), 'utf8')).toBe('abc');
  });
});

import { constants, promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';

/**
 * What a writer gathers before one write(2): blobs of small files are a few KiB each. Each
 * writer has two, so one fills while the other is on its way to the disk.
 */
export const WRITE_BUFFER = 1024 * 1024;
/**
 * Direct I/O moves whole blocks: offsets and lengths are multiples of this, the page size,
 * which covers the logical block of the devices and filesystems we run on.
 */
const DIRECT_BLOCK = 4096;
const WASM_PAGE = 64 * 1024;
/** Buffer pairs kept for later writers: a server's two open packs and those being committed. */
const SPARE_PAIRS = 4;

/**
 * Opens files that are written once, front to back, past the page cache (O_DIRECT) while the
 * filesystem takes it. For a file that is fsynced at once and not read again soon (a pack),
 * the cache only costs: the kernel copies every byte into fresh pages (on the 2-core VM of
 * docs/benchmarks.md, 1.5-2.1 CPU s per GiB) and evicts pages the machine's own work was using.
 * A filesystem that refuses O_DIRECT (at open, or at a write: FUSE, blocks larger than ours)
 * gets the same bytes through the page cache, and later files do not try again.
 *
 * Not used for restored files: measured there, it saved no time (4.35-4.77 against
 * 4.18-4.46 s for 1 GiB, the extra copy into aligned buffers costing what the kernel's saved),
 * and a restored file is usually read soon after.
 */
export class DirectFiles {
  private direct = process.platform === 'linux' && constants.O_DIRECT !== undefined;
  /**
   * Buffers of finished writers, for the next. Capped: a burst of writers must not pin its
   * peak for the life of the process, and each buffer holds an address-space reservation.
   */
  private readonly spare: Buffer[] = [];

  /** `allocate` gives the buffers; a test hands out unaligned ones to see the kernel refuse them. */
  constructor(private readonly allocate: (bytes: number) => Buffer = pageAlignedBuffer) {}

  /** Creates `file`, which must not exist (O_EXCL), for writing front to back. */
  async create(file: string, mode: number): Promise<SequentialWriter> {
    const buffers = this.takeBuffers();
    const base = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL;
    let handle: FileHandle | undefined;
    try {
      if (this.direct && buffers.aligned) {
        try {
          handle = await fs.open(file, base | constants.O_DIRECT, mode);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
          this.direct = false;
          // Linux checks O_DIRECT after it has created the file: that file is ours (O_EXCL), and
          // would make the open below fail with EEXIST.
          await fs.rm(file, { force: true });
        }
      }
      const direct = handle !== undefined;
      handle ??= await fs.open(file, base, mode);
      return new SequentialWriter(file, handle, direct, buffers, this);
    } catch (err) {
      this.release(buffers);
      throw err;
    }
  }

  /** A pair of buffers; unaligned (so written through the page cache) if no aligned memory can be had. */
  private takeBuffers(): WriteBuffers {
    const spare = this.spare.pop();
    if (spare) return { buffer: spare, aligned: true };
    try {
      return { buffer: this.allocate(2 * WRITE_BUFFER), aligned: true };
    } catch {
      // A WebAssembly memory reserves its address space whole: `ulimit -v` can refuse it.
      return { buffer: Buffer.allocUnsafeSlow(2 * WRITE_BUFFER), aligned: false };
    }
  }

  /** @internal A direct write was refused with EINVAL. */
  refused(): void {
    this.direct = false;
  }

  /** @internal A writer is done with its buffers. Only aligned ones are kept: the next writer takes them for direct I/O. */
  release(buffers: WriteBuffers): void {
    if (buffers.aligned && this.spare.length < SPARE_PAIRS) this.spare.push(buffers.buffer);
  }
}

/** A writer's two halves, one piece of memory; `aligned` when it starts on a page. */
interface WriteBuffers {
  buffer: Buffer;
  aligned: boolean;
}

/**
 * A buffer that starts on a memory page, as direct I/O needs: the kernel refuses (EINVAL) to
 * transfer from an address not aligned to the device's blocks. Node's Buffers come from
 * malloc, 16 bytes past a page; a WebAssembly memory is mapped whole, so it starts on one.
 * Its size is fixed: growing a WebAssembly memory would detach this view.
 */
export function pageAlignedBuffer(bytes: number): Buffer {
  const pages = Math.ceil(bytes / WASM_PAGE);
  return Buffer.from(new WebAssembly.Memory({ initial: pages, maximum: pages }).buffer, 0, bytes);
}

/** One file being written front to back; memory is its two buffers whatever the file's size. */
export class SequentialWriter {
  private readonly halves: [Buffer, Buffer];
  private filling = 0;
  private used = 0;
  /** Where the next write(2) goes: bytes handed to the file so far. */
  private offset = 0;
  /** The write of the other half; the next flip waits for it. */
  private inFlight: Promise<void> = Promise.resolve();
  /** A direct write's last block was padded with zeros: finish cuts the file back. */
  private padded = false;
  private released = false;
  /** A write failed: where the file ends is unknown, so nothing more may go into it. */
  private failed = false;
  /** The write() running, if any: close waits for it before the buffers go back. */
  private writing: Promise<void> = Promise.resolve();

  constructor(
    readonly path: string,
    private file: FileHandle,
    private direct: boolean,
    private readonly buffers: WriteBuffers,
    private readonly owner: DirectFiles,
  ) {
    const b = buffers.buffer;
    this.halves = [b.subarray(0, WRITE_BUFFER), b.subarray(WRITE_BUFFER, 2 * WRITE_BUFFER)];
  }

  /** Bytes given to write so far. */
  get bytes(): number {
    return this.offset + this.used;
  }

  /** Whether the file is open with O_DIRECT (it stops being if the filesystem refuses a write). */
  get isDirect(): boolean {
    return this.direct;
  }

  /** Appends `data`; once this resolves the caller may reuse it. Calls must not overlap. */
  async write(data: Uint8Array): Promise<void> {
    this.checkOpen();
    const running = this.append(data);
    this.writing = running.catch(() => undefined);
    return running;
  }

  private async append(data: Uint8Array): Promise<void> {
    try {
      for (let at = 0; at < data.length; ) {
        const n = Math.min(data.length - at, WRITE_BUFFER - this.used);
        this.halves[this.filling].set(data.subarray(at, at + n), this.used);
        this.used += n;
        at += n;
        if (this.used === WRITE_BUFFER) await this.flip();
      }
    } catch (err) {
      this.failed = true;
      throw err;
    }
  }

  /** Sends the full half to the file and, once the other half's write is done, fills that one. */
  private async flip(): Promise<void> {
    await this.inFlight;
    this.inFlight = this.writeOut(this.halves[this.filling], this.used);
    // Reported by the next flip or by finish; abort after a failure must not make it unhandled.
    this.inFlight.catch(() => undefined);
    this.filling ^= 1;
    this.used = 0;
  }

  private async writeOut(buf: Buffer, length: number): Promise<void> {
    const position = this.offset;
    this.offset += length;
    let size = length;
    if (this.direct && length % DIRECT_BLOCK !== 0) {
      size = length + DIRECT_BLOCK - (length % DIRECT_BLOCK);
      buf.fill(0, length, size);
      this.padded = true;
    }
    for (let at = 0; at < size; ) {
      at += await this.writeAt(buf, at, size - at, position + at);
    }
  }

  private async writeAt(buf: Buffer, at: number, length: number, position: number): Promise<number> {
    try {
      return (await this.file.write(buf, at, length, position)).bytesWritten;
    } catch (err) {
      if (!this.direct || (err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
      this.owner.refused();
      const file = await fs.open(this.path, constants.O_WRONLY);
      await this.file.close().catch(() => undefined);
      this.file = file;
      this.direct = false;
      return (await this.file.write(buf, at, length, position)).bytesWritten;
    }
  }

  /**
   * Writes what is buffered and cuts off any padding; returns the open file, its length exact,
   * for the caller to sync, stamp and close. Nothing may be written after.
   */
  async finish(): Promise<FileHandle> {
    this.checkOpen();
    try {
      await this.inFlight;
      if (this.used > 0) await this.writeOut(this.halves[this.filling], this.used);
      this.used = 0;
      if (this.padded) await this.file.truncate(this.offset);
      return this.file;
    } finally {
      this.release();
    }
  }

  /** Closes the file, whatever was written; the caller removes it. Harmless after finish. */
  async close(): Promise<void> {
    await this.writing;
    await this.inFlight.catch(() => undefined);
    this.release();
    await this.file.close().catch(() => undefined);
  }

  /** The buffers went back at finish or close and may be another writer's now. */
  private checkOpen(): void {
    if (this.released || this.failed) throw new Error(`${this.path}: written to after finish, close or a failed write`);
  }

  /** Only with no write in flight: the kernel may still be reading a buffer it was given. */
  private release(): void {
    if (this.released) return;
    this.released = true;
    this.owner.release(this.buffers);
  }
}

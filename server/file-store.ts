import { randomBytes } from 'node:crypto';
import { constants, promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { CairnError, Code, invalidArgument, notFound } from '../common/errors.js';
import { emptyCounts, type ObjectInfo, type ObjectStore, type ObjectWriter, type RequestCounts } from './object-store.js';
import { OpenFiles } from './open-files.js';
import { pageAlignedBuffer } from './aligned-buffer.js';

/**
 * What an ObjectWriter gathers before one write(2): blobs of small files are a few KiB each.
 * Each writer has two, so one fills while the other is on its way to the disk.
 */
const WRITE_BUFFER = 1024 * 1024;
/** Direct I/O moves whole blocks: offsets and lengths are multiples of this (ext4's block). */
const DIRECT_BLOCK = 4096;

/**
 * Every temporary file, of put and of openWriter alike, is named `<stem>.tmp-<12 hex>`; list()
 * skips those names and deleteUnfinished() removes them. The two functions below are the one
 * place that format lives: a directory or key that merely contains ".tmp-" (a repository or
 * dataset name) is neither hidden nor deleted.
 */
const TMP_NAME = /\.tmp-[0-9a-f]{12}$/;

function temporaryName(stem: string): string {
  return `${stem}.tmp-${randomBytes(6).toString('hex')}`;
}

function isTemporary(key: string): boolean {
  return TMP_NAME.test(key.slice(key.lastIndexOf('/') + 1));
}

/**
 * The embedded default: objects are files under one directory. Writes go to a temporary
 * name, are fsynced, then renamed, so a kill -9 or a full disk never leaves a torn object
 * under its real key.
 */
export class FileStore implements ObjectStore {
  readonly description: string;
  private readonly stats = emptyCounts();
  private readonly openFiles = new OpenFiles();
  /**
   * Packs are written past the page cache (O_DIRECT) while the filesystem takes it. A pack is
   * fsynced as soon as it is written and not read again until a restore or a check, so caching
   * it only costs: the kernel copies every byte into fresh pages (on the 2-core VM of
   * docs/benchmarks.md, 1.5 of the server's 4.4 CPU seconds per GiB) and evicts the pages the
   * machine's own work was using.
   */
  private direct = process.platform === 'linux' && constants.O_DIRECT !== undefined;
  /** Writers' buffers, kept for the next writer: a pack needs one pair, a busy server a few. */
  private readonly spareBuffers: Buffer[] = [];

  constructor(private readonly root: string) {
    this.description = `file:${root}`;
  }

  private resolve(key: string): string {
    if (key === '' || key.startsWith('/') || key.split('/').some((p) => p === '..' || p === '' || p === '.')) {
      throw invalidArgument(`invalid object key ${JSON.stringify(key)}`);
    }
    return path.join(this.root, key);
  }

  async put(key: string, data: Buffer): Promise<void> {
    const dest = this.resolve(key);
    await this.writeAtomically(dest, data, async (tmp) => fs.rename(tmp, dest));
  }

  async putIfAbsent(key: string, data: Buffer): Promise<boolean> {
    const dest = this.resolve(key);
    let created = true;
    // link(2) fails with EEXIST instead of replacing: the conditional write a lease needs.
    await this.writeAtomically(dest, data, async (tmp) => {
      try {
        await fs.link(tmp, dest);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        created = false;
      } finally {
        await fs.rm(tmp, { force: true });
      }
    });
    return created;
  }

  async openWriter(dir: string): Promise<ObjectWriter> {
    const folder = this.resolve(dir);
    await fs.mkdir(folder, { recursive: true });
    const tmp = path.join(folder, temporaryName(''));
    const opened = await this.openTemp(tmp);
    return new FileWriter(tmp, opened, this.spareBuffers.pop() ?? pageAlignedBuffer(2 * WRITE_BUFFER), {
      publish: async (key, bytes, file) => {
        const dest = this.resolve(key);
        this.count(bytes);
        await fs.mkdir(path.dirname(dest), { recursive: true });
        await this.finish(tmp, file, dest, (t) => fs.rename(t, dest));
      },
      refuseDirect: () => {
        this.direct = false;
      },
      release: (buffers) => {
        this.spareBuffers.push(buffers);
      },
    });
  }

  /** Opens a writer's temporary, direct when the filesystem lets us; says which it got. */
  private async openTemp(tmp: string): Promise<{ handle: FileHandle; direct: boolean }> {
    const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL;
    if (this.direct) {
      try {
        return { handle: await fs.open(tmp, flags | constants.O_DIRECT, 0o644), direct: true };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
        this.direct = false;
      }
    }
    return { handle: await fs.open(tmp, flags, 0o644), direct: false };
  }

  private async writeAtomically(dest: string, data: Buffer, commit: (tmp: string) => Promise<void>): Promise<void> {
    this.count(data.length);
    const { tmp, fh } = await this.createTemp(path.dirname(dest), path.basename(dest));
    try {
      await fh.writeFile(data);
    } catch (err) {
      await fh.close().catch(() => undefined);
      await fs.rm(tmp, { force: true });
      throw err;
    }
    await this.finish(tmp, fh, dest, commit);
  }

  private async createTemp(dir: string, stem: string): Promise<{ tmp: string; fh: FileHandle }> {
    await fs.mkdir(dir, { recursive: true });
    const tmp = path.join(dir, temporaryName(stem));
    return { tmp, fh: await fs.open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644) };
  }

  /** The temporary's bytes are durable before they get a name, and the name before we return. */
  private async finish(tmp: string, fh: FileHandle, dest: string, commit: (tmp: string) => Promise<void>): Promise<void> {
    try {
      await fh.sync();
    } catch (err) {
      await fh.close().catch(() => undefined);
      await fs.rm(tmp, { force: true });
      throw err;
    }
    await fh.close();
    await commit(tmp);
    const dir = path.dirname(dest);
    const dh = await fs.open(dir, constants.O_RDONLY);
    try {
      await dh.sync();
    } finally {
      await dh.close();
    }
    this.openFiles.retire(dest);
  }

  private count(bytes: number): void {
    this.stats.put++;
    this.stats.bytesUp += bytes;
  }

  async get(key: string): Promise<Buffer> {
    this.stats.get++;
    try {
      const data = await fs.readFile(this.resolve(key));
      this.stats.bytesDown += data.length;
      return data;
    } catch (err) {
      throw this.mapError(err, key);
    }
  }

  async getRange(key: string, offset: number, length: number): Promise<Buffer> {
    this.stats.get++;
    try {
      return await this.openFiles.use(this.resolve(key), async (fh) => {
        const buf = Buffer.allocUnsafe(length);
        let got = 0;
        while (got < length) {
          const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
          if (bytesRead === 0) break;
          got += bytesRead;
        }
        if (got !== length) {
          throw new CairnError(Code.DATA_LOSS, `object ${key} is shorter than expected: wanted bytes ${offset}..${offset + length}, it ends at ${offset + got}`);
        }
        this.stats.bytesDown += length;
        return buf;
      });
    } catch (err) {
      throw this.mapError(err, key);
    }
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    this.stats.head++;
    try {
      const st = await fs.stat(this.resolve(key));
      return { key, size: st.size };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    this.stats.list++;
    for await (const key of this.files(prefix)) {
      if (isTemporary(key)) continue;
      const st = await fs.stat(path.join(this.root, key));
      yield { key, size: st.size };
    }
  }

  async deleteUnfinished(prefix: string): Promise<number> {
    let n = 0;
    for await (const key of this.files(prefix)) {
      if (!isTemporary(key)) continue;
      await fs.rm(path.join(this.root, key), { force: true });
      n++;
    }
    return n;
  }

  /** Every file whose key starts with `prefix`, temporaries included. */
  private async *files(prefix: string): AsyncIterable<string> {
    // Walk only the directory the prefix names, so listing `packs/` never touches `snapshots/`.
    const slash = prefix.lastIndexOf('/');
    const baseRel = slash >= 0 ? prefix.slice(0, slash) : '';
    const stack = [baseRel];
    while (stack.length > 0) {
      const rel = stack.pop()!;
      let entries;
      try {
        entries = await fs.readdir(path.join(this.root, rel), { withFileTypes: true });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw err;
      }
      for (const e of entries) {
        const key = rel === '' ? e.name : `${rel}/${e.name}`;
        if (e.isDirectory()) {
          if (key.startsWith(prefix) || prefix.startsWith(`${key}/`)) stack.push(key);
        } else if (e.isFile() && key.startsWith(prefix)) {
          yield key;
        }
      }
    }
  }

  async delete(keys: string[]): Promise<void> {
    for (const key of keys) {
      this.stats.delete++;
      const file = this.resolve(key);
      await fs.rm(file, { force: true });
      this.openFiles.retire(file);
    }
  }

  counts(): RequestCounts {
    return { ...this.stats };
  }

  async close(): Promise<void> {
    await this.openFiles.close();
  }

  private mapError(err: unknown, key: string): unknown {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return notFound(`object ${key} does not exist in ${this.description}`);
    return err;
  }
}

interface WriterHooks {
  /** Makes the closed-over temporary durable and renames it to `key`. */
  publish(key: string, bytes: number, file: FileHandle): Promise<void>;
  /** The filesystem refused a direct write: later writers should not try. */
  refuseDirect(): void;
  /** The writer's buffers are free for another writer. */
  release(buffers: Buffer): void;
}

/**
 * Bytes go to a temporary file in the store's own tree, so commit is a rename on the same
 * filesystem and memory stays two write buffers whatever the object's size.
 */
class FileWriter implements ObjectWriter {
  private readonly halves: [Buffer, Buffer];
  private filling = 0;
  private used = 0;
  /** Where the next write(2) goes: bytes handed to the file so far. */
  private offset = 0;
  /** The write of the other half; the next flip waits for it. */
  private inFlight: Promise<void> = Promise.resolve();
  private file: FileHandle;
  private direct: boolean;
  /** A direct write's last block was padded with zeros: commit cuts the file back. */
  private padded = false;
  private released = false;

  constructor(
    private readonly tmp: string,
    opened: { handle: FileHandle; direct: boolean },
    private readonly buffers: Buffer,
    private readonly hooks: WriterHooks,
  ) {
    this.file = opened.handle;
    this.direct = opened.direct;
    this.halves = [buffers.subarray(0, WRITE_BUFFER), buffers.subarray(WRITE_BUFFER, 2 * WRITE_BUFFER)];
  }

  async write(data: Buffer): Promise<void> {
    for (let at = 0; at < data.length; ) {
      const n = data.copy(this.halves[this.filling], this.used, at);
      this.used += n;
      at += n;
      if (this.used === WRITE_BUFFER) await this.flip();
    }
  }

  /** Sends the full half to the file and, once the other half's write is done, fills that one. */
  private async flip(): Promise<void> {
    await this.inFlight;
    this.inFlight = this.writeOut(this.halves[this.filling], this.used);
    // Reported by the next flip or by commit; abort after a failure must not make it unhandled.
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
      // Some filesystems take O_DIRECT at open and refuse it at write, or want larger blocks:
      // the same file, opened again through the page cache, takes the same bytes.
      this.hooks.refuseDirect();
      const file = await fs.open(this.tmp, constants.O_WRONLY);
      await this.file.close().catch(() => undefined);
      this.file = file;
      this.direct = false;
      return (await this.file.write(buf, at, length, position)).bytesWritten;
    }
  }

  async commit(key: string): Promise<void> {
    try {
      await this.inFlight;
      if (this.used > 0) await this.writeOut(this.halves[this.filling], this.used);
      this.used = 0;
      if (this.padded) await this.file.truncate(this.offset);
      await this.hooks.publish(key, this.offset, this.file);
    } finally {
      this.release();
    }
  }

  async abort(): Promise<void> {
    await this.inFlight.catch(() => undefined);
    this.release();
    // Closed whatever commit got to: a publish that failed before its own close (an invalid
    // key, a full disk at mkdir) would otherwise keep the deleted file's blocks allocated.
    await this.file.close().catch(() => undefined);
    await fs.rm(this.tmp, { force: true });
  }

  /** Only with no write in flight: the kernel may still be reading a buffer it was given. */
  private release(): void {
    if (this.released) return;
    this.released = true;
    this.hooks.release(this.buffers);
  }
}

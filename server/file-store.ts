import { randomBytes } from 'node:crypto';
import { constants, promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { CairnError, Code, invalidArgument, notFound } from '../common/errors.js';
import { emptyCounts, type ObjectInfo, type ObjectStore, type ObjectWriter, type RequestCounts } from './object-store.js';
import { OpenFiles } from './open-files.js';
import { DirectFiles } from './direct-writer.js';

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
   * Packs go past the page cache: each is fsynced at once and not read until a restore or a
   * check, so caching it only cost the kernel's copy into fresh pages (1.5-2.1 of the server's
   * 6.2 CPU s in a 1 GiB first snapshot on the benchmark's VM) and evicted the machine's own.
   */
  private readonly directFiles = new DirectFiles();

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
    const tmp = await this.tempPath(this.resolve(dir), '');
    const out = await this.directFiles.create(tmp, 0o644);
    return {
      write: (data) => out.write(data),
      commit: async (key) => {
        const dest = this.resolve(key);
        const file = await out.finish();
        this.count(out.bytes);
        await fs.mkdir(path.dirname(dest), { recursive: true });
        await this.finish(tmp, file, dest, (t) => fs.rename(t, dest));
      },
      abort: async () => {
        // Closed whatever commit got to: a publish that failed before its own close (an invalid
        // key, a full disk at mkdir) would otherwise keep the deleted file's blocks allocated.
        await out.close();
        await fs.rm(tmp, { force: true });
      },
    };
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
    const tmp = await this.tempPath(dir, stem);
    return { tmp, fh: await fs.open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644) };
  }

  /** A fresh temporary's name in `dir`, which is made if missing. */
  private async tempPath(dir: string, stem: string): Promise<string> {
    await fs.mkdir(dir, { recursive: true });
    return path.join(dir, temporaryName(stem));
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

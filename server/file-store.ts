import { randomBytes } from 'node:crypto';
import { constants, promises as fs } from 'node:fs';
import path from 'node:path';
import { CairnError, Code, invalidArgument, notFound } from '../common/errors.js';
import { emptyCounts, type ObjectInfo, type ObjectStore, type RequestCounts } from './object-store.js';
import { OpenFiles } from './open-files.js';

const TMP_SUFFIX = '.tmp-';

/**
 * The embedded default: objects are files under one directory. Writes go to a temporary
 * name, are fsynced, then renamed, so a kill -9 or a full disk never leaves a torn object
 * under its real key.
 */
export class FileStore implements ObjectStore {
  readonly description: string;
  private readonly stats = emptyCounts();
  private readonly openFiles = new OpenFiles();

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
    this.openFiles.retire(dest);
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
    this.openFiles.retire(dest);
    return created;
  }

  private async writeAtomically(dest: string, data: Buffer, commit: (tmp: string) => Promise<void>): Promise<void> {
    this.stats.put++;
    this.stats.bytesUp += data.length;
    const dir = path.dirname(dest);
    await fs.mkdir(dir, { recursive: true });
    const tmp = `${dest}${TMP_SUFFIX}${randomBytes(6).toString('hex')}`;
    const fh = await fs.open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } catch (err) {
      await fh.close().catch(() => undefined);
      await fs.rm(tmp, { force: true });
      throw err;
    }
    await fh.close();
    await commit(tmp);
    const dh = await fs.open(dir, constants.O_RDONLY);
    try {
      await dh.sync();
    } finally {
      await dh.close();
    }
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
        } else if (e.isFile() && key.startsWith(prefix) && !e.name.includes(TMP_SUFFIX)) {
          const st = await fs.stat(path.join(this.root, key));
          yield { key, size: st.size };
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

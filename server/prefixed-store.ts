import type { ObjectInfo, ObjectStore, ObjectWriter, RequestCounts } from './object-store.js';

/** One repository's view of a shared store: every key lives under `prefix`, so repositories cannot see each other. */
export class PrefixedStore implements ObjectStore {
  readonly description: string;

  constructor(
    private readonly inner: ObjectStore,
    private readonly prefix: string,
  ) {
    this.description = `${inner.description}/${prefix.replace(/\/$/, '')}`;
  }

  put(key: string, data: Buffer): Promise<void> {
    return this.inner.put(this.prefix + key, data);
  }
  putIfAbsent(key: string, data: Buffer): Promise<boolean> {
    return this.inner.putIfAbsent(this.prefix + key, data);
  }
  async openWriter(dir: string): Promise<ObjectWriter> {
    const writer = await this.inner.openWriter(this.prefix + dir);
    return { write: (data) => writer.write(data), commit: (key) => writer.commit(this.prefix + key), abort: () => writer.abort() };
  }
  deleteUnfinished(prefix: string): Promise<number> {
    return this.inner.deleteUnfinished(this.prefix + prefix);
  }
  get(key: string): Promise<Buffer> {
    return this.inner.get(this.prefix + key);
  }
  getRange(key: string, offset: number, length: number): Promise<Buffer> {
    return this.inner.getRange(this.prefix + key, offset, length);
  }
  async head(key: string): Promise<ObjectInfo | undefined> {
    const info = await this.inner.head(this.prefix + key);
    return info && { key, size: info.size };
  }
  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    for await (const o of this.inner.list(this.prefix + prefix)) yield { key: o.key.slice(this.prefix.length), size: o.size };
  }
  delete(keys: string[]): Promise<void> {
    return this.inner.delete(keys.map((k) => this.prefix + k));
  }
  counts(): RequestCounts {
    return this.inner.counts();
  }
  async close(): Promise<void> {}
}

/**
 * Where a repository's objects live. Every key is a relative path such as
 * `packs/ab/<id>`, `index/<id>`, `snapshots/<id>`, `config`, `locks/writer`.
 *
 * Contract every backend keeps:
 * - `put` is atomic (a reader sees the whole object or none) and idempotent: keys are
 *   content-addressed, so writing the same key twice writes the same bytes.
 * - `putIfAbsent` is the one conditional write: it stores only when the key does not exist
 *   and says whether it did (used for the writer lease).
 * - `get`/`getRange` throw a CairnError NOT_FOUND for a missing key.
 * - `list` pages internally and yields every key under the prefix, in no promised order.
 * - `openWriter` is for an object whose key is known only once its last byte is written (a
 *   pack is named by its hash). `commit` publishes it with the guarantees of `put`: until then
 *   no key, `list` or `head` shows it, and after a failure `abort` leaves nothing behind.
 * - `deleteUnfinished` removes what writers killed mid-write left under a prefix; `list` never
 *   yields those leftovers, so only disk space depends on it.
 */
export interface ObjectInfo {
  key: string;
  size: number;
}

export interface RequestCounts {
  put: number;
  get: number;
  list: number;
  delete: number;
  head: number;
  retries: number;
  bytesUp: number;
  bytesDown: number;
}

/** An object being written; see `ObjectStore.openWriter`. */
export interface ObjectWriter {
  /** Appends `data`; once this resolves the caller may reuse the buffer. Calls must not overlap. */
  write(data: Buffer): Promise<void>;
  /** Publishes what was written under `key`, atomically as `put` would. */
  commit(key: string): Promise<void>;
  /** Drops what was written; harmless after a failed write or commit, and after a commit. */
  abort(): Promise<void>;
}

export interface ObjectStore {
  /** A short description for logs, e.g. `file:/data/cairn` or `s3://bucket/prefix`. */
  readonly description: string;
  put(key: string, data: Buffer): Promise<void>;
  putIfAbsent(key: string, data: Buffer): Promise<boolean>;
  /**
   * For a store whose putIfAbsent rests on the remote end honouring a conditional create:
   * whether it does. The writer lease keeps a second server out only if so.
   */
  honoursConditionalCreate?(): Promise<boolean>;
  /**
   * Starts an object whose bytes are kept, until commit, under the key prefix `dir` (e.g.
   * `packs`): where `deleteUnfinished` of that repository finds them if the writer dies.
   */
  openWriter(dir: string): Promise<ObjectWriter>;
  /**
   * Removes the leftovers of writers that died mid-write under `prefix` and says how many.
   * Only for a caller that knows nothing writes there meanwhile: a repository's lease holder
   * before it starts writing.
   */
  deleteUnfinished(prefix: string): Promise<number>;
  get(key: string): Promise<Buffer>;
  getRange(key: string, offset: number, length: number): Promise<Buffer>;
  head(key: string): Promise<ObjectInfo | undefined>;
  list(prefix: string): AsyncIterable<ObjectInfo>;
  delete(keys: string[]): Promise<void>;
  counts(): RequestCounts;
  close(): Promise<void>;
}

export function emptyCounts(): RequestCounts {
  return { put: 0, get: 0, list: 0, delete: 0, head: 0, retries: 0, bytesUp: 0, bytesDown: 0 };
}

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

export interface ObjectStore {
  /** A short description for logs, e.g. `file:/data/cairn` or `s3://bucket/prefix`. */
  readonly description: string;
  put(key: string, data: Buffer): Promise<void>;
  putIfAbsent(key: string, data: Buffer): Promise<boolean>;
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

import { BlobDecompressor } from '../common/compression.js';
import { CairnError, Code, dataLoss } from '../common/errors.js';
import { hash, toHex } from '../common/hash.js';
import type { Blob } from '../common/messages.js';
import type { Connection } from './connection.js';
import { MAX_CLIENT_MESSAGE_BYTES } from './limits.js';

/** Raw bytes asked for in one ReadChunks call; the server coalesces them into few ranged reads. */
const BATCH_BYTES = 8 * 1024 * 1024;
const BATCH_IDS = 256;

/**
 * Streams a file's chunks in order: batches of ids go out as ReadChunks calls (one ahead of
 * the consumer), come back in pack order, and are inflated and re-hashed before anyone sees
 * them. A chunk that does not match its id stops the restore with DATA_LOSS naming the file.
 */
export class ChunkFetcher {
  private readonly decompressor = new BlobDecompressor();

  constructor(private readonly conn: Connection) {}

  /** `avgChunk` estimates raw bytes per chunk, to size the batches. */
  async *chunks(ids: Buffer[], what: string, avgChunk: number): AsyncGenerator<Buffer> {
    const batches: Buffer[][] = [];
    let cur: Buffer[] = [];
    for (const id of ids) {
      cur.push(id);
      if (cur.length >= BATCH_IDS || cur.length * avgChunk >= BATCH_BYTES) {
        batches.push(cur);
        cur = [];
      }
    }
    if (cur.length > 0) batches.push(cur);
    let next = batches.length > 0 ? this.fetchBatch(batches[0], what) : undefined;
    for (let i = 0; i < batches.length; i++) {
      const current = next!;
      next = i + 1 < batches.length ? this.fetchBatch(batches[i + 1], what) : undefined;
      // Keep the prefetch from becoming an unhandled rejection if we stop early.
      next?.catch(() => undefined);
      yield* await current;
    }
  }

  /**
   * One ReadChunks call: the raw, verified bytes of `ids`, in the order asked. `what` names
   * the file a chunk belongs to, so every error says which file it hurts.
   */
  async fetchBatch(ids: Buffer[], what: string | ((id: Buffer) => string)): Promise<Buffer[]> {
    const describe = typeof what === 'string' ? () => what : what;
    const unique = [...new Map(ids.map((id) => [toHex(id), id])).values()];
    const got = new Map<string, Buffer>();
    const stream = this.conn.stream<Blob>('ReadChunks', { ids: unique });
    try {
      for (;;) {
        let next: IteratorResult<Blob>;
        try {
          next = await stream.next();
        } catch (err) {
          // The server's own NOT_FOUND or DATA_LOSS names the chunk; add the file it belongs to.
          if (err instanceof CairnError && (err.code === Code.NOT_FOUND || err.code === Code.DATA_LOSS)) {
            const hex = /[0-9a-f]{64}/.exec(err.message)?.[0];
            const owner = unique.find((id) => toHex(id) === hex) ?? unique[0];
            throw dataLoss(`${describe(owner)}: ${err.message}`);
          }
          throw err;
        }
        if (next.done) break;
        got.set(toHex(next.value.id), this.verify(next.value, describe(next.value.id)));
      }
    } finally {
      // Stops the call when verification throws mid-stream.
      await stream.return(undefined);
    }
    return ids.map((id) => {
      const raw = got.get(toHex(id));
      if (!raw) throw dataLoss(`${describe(id)}: server did not return chunk ${toHex(id)}`);
      return raw;
    });
  }

  private verify(blob: Blob, what: string): Buffer {
    const hex = toHex(blob.id);
    // Inflating allocates raw_length up front: a hostile server must not size that at will.
    if (blob.rawLength > MAX_CLIENT_MESSAGE_BYTES) throw dataLoss(`${what}: chunk ${hex} claims ${blob.rawLength} raw bytes, more than any chunk may hold`);
    let raw: Buffer;
    try {
      raw = blob.compression === 'ZSTD' ? this.decompressor.decompress(blob.data, blob.rawLength, `chunk ${hex}`) : blob.data;
    } catch (err) {
      throw dataLoss(`${what}: chunk ${hex} is corrupt (${(err as Error).message})`);
    }
    if (!hash(raw).equals(blob.id)) throw dataLoss(`${what}: chunk ${hex} is corrupt: its bytes do not hash to its id`);
    return raw;
  }
}

import { BlobDecompressor } from '../common/compression.js';
import { CairnError, Code, dataLoss } from '../common/errors.js';
import { hash, toHex } from '../common/hash.js';
import type { Blob } from '../common/messages.js';
import type { Connection } from './connection.js';
import { MAX_CLIENT_MESSAGE_BYTES } from './limits.js';
import { Arena, contiguousRuns, SlabPool } from './slab-pool.js';

/**
 * Raw bytes asked for in one ReadChunks call; the server coalesces them into few ranged reads.
 * Each running job holds two batches (one written, one on its way), and the server reads each
 * call's ranges into memory, so this sets much of both peaks: 8 MiB cost 40-60 MiB more client
 * RSS and 25-60 MiB more server RSS than 4 MiB for the same time (1 GiB restore, 2 cores);
 * 2 MiB saved another ~15 MiB for 0.3 s more CPU.
 */
const BATCH_BYTES = 4 * 1024 * 1024;
const BATCH_IDS = 256;
/** A slab holds a batch of average chunks, or at least one of the largest. */
const SLAB_BYTES = 4 * 1024 * 1024;
const MAX_FREE_SLABS = 16;

/** Verified chunks in the order asked, valid until release(): their memory is reused after. */
export interface FetchedBatch {
  chunks: Buffer[];
  release(): void;
}

/**
 * Streams a file's chunks in order: batches of ids go out as ReadChunks calls (one ahead of
 * the consumer), come back in pack order, and are inflated and re-hashed before anyone sees
 * them. A chunk that does not match its id stops the restore with DATA_LOSS naming the file.
 */
export class ChunkFetcher {
  private readonly decompressor = new BlobDecompressor();
  private readonly pool: SlabPool | undefined;

  /**
   * With `reuseFor` (the chunker's largest chunk), chunk memory is reused: only for a consumer
   * that is done with a chunk when it asks for the next one (a write it awaited, not a stream
   * that may still queue it) and with a batch when it releases it.
   */
  constructor(
    private readonly conn: Connection,
    reuseFor?: { maxChunk: number },
  ) {
    this.pool = reuseFor && new SlabPool(Math.max(SLAB_BYTES, reuseFor.maxChunk), MAX_FREE_SLABS);
  }

  /**
   * `avgChunk` estimates raw bytes per chunk, to size the batches. Chunks that lie next to
   * each other in memory come merged, so a yielded buffer may hold several; each is valid
   * until the consumer asks for the next.
   */
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
    try {
      for (let i = 0; i < batches.length; i++) {
        const current = await next!;
        next = i + 1 < batches.length ? this.fetchBatch(batches[i + 1], what) : undefined;
        // A prefetch that fails while this batch is written is reported when its turn comes.
        next?.catch(() => undefined);
        try {
          yield* contiguousRuns(current.chunks);
        } finally {
          current.release();
        }
      }
    } finally {
      // A prefetch nobody will consume gives its memory back.
      next?.then(
        (b) => b.release(),
        () => undefined,
      );
    }
  }

  /**
   * One ReadChunks call: the raw, verified bytes of `ids`, in the order asked. `what` names
   * the file a chunk belongs to, so every error says which file it hurts.
   */
  async fetchBatch(ids: Buffer[], what: string | ((id: Buffer) => string)): Promise<FetchedBatch> {
    const describe = typeof what === 'string' ? () => what : what;
    const unique = [...new Map(ids.map((id) => [toHex(id), id])).values()];
    const got = new Map<string, Buffer>();
    const arena = new Arena(this.pool);
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
        got.set(toHex(next.value.id), this.verify(next.value, describe(next.value.id), arena));
      }
      const chunks = ids.map((id) => {
        const raw = got.get(toHex(id));
        if (!raw) throw dataLoss(`${describe(id)}: server did not return chunk ${toHex(id)}`);
        return raw;
      });
      return { chunks, release: () => arena.release() };
    } catch (err) {
      arena.release();
      throw err;
    } finally {
      // Stops the call when verification throws mid-stream.
      await stream.return(undefined);
    }
  }

  private verify(blob: Blob, what: string, arena: Arena): Buffer {
    const hex = toHex(blob.id);
    // Inflating takes raw_length bytes up front: a hostile server must not size that at will.
    if (blob.rawLength > MAX_CLIENT_MESSAGE_BYTES) throw dataLoss(`${what}: chunk ${hex} claims ${blob.rawLength} raw bytes, more than any chunk may hold`);
    let raw: Buffer;
    try {
      raw = blob.compression === 'ZSTD' ? this.decompressor.decompress(blob.data, blob.rawLength, `chunk ${hex}`, arena.alloc(blob.rawLength)) : blob.data;
    } catch (err) {
      throw dataLoss(`${what}: chunk ${hex} is corrupt (${(err as Error).message})`);
    }
    if (!hash(raw).equals(blob.id)) throw dataLoss(`${what}: chunk ${hex} is corrupt: its bytes do not hash to its id`);
    return raw;
  }
}

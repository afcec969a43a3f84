import { toHex } from '../common/hash.js';
import type { Blob, BlobKind, UploadReply } from '../common/messages.js';
import { BufferPool } from './buffer-pool.js';
import type { CompressPool } from './compress-pool.js';
import type { Connection } from './connection.js';
import { FIND_MISSING_BATCH, SNAPSHOT_WINDOW_BLOBS, SNAPSHOT_WINDOW_BYTES, UPLOAD_STREAM_QUEUE_BYTES } from './limits.js';
import { UploadStream } from './upload-stream.js';

interface Asked {
  id: Buffer;
  resolve: (missing: boolean) => void;
  reject: (err: unknown) => void;
}

export interface UploadStats {
  blobsOffered: number;
  blobsUploaded: number;
  bytesUploaded: number;
}

const MAX_FIND_MISSING_IN_FLIGHT = 4;
/** Ids this run already offered; beyond this it forgets them and lets the server dedup. */
const MAX_REMEMBERED_IDS = 100_000;

/**
 * The upload half of a backup session: asks the server which chunks it lacks (in batches),
 * compresses only those in worker threads, and streams them in ~1 MiB messages over one
 * Upload call per channel, honouring the stream's backpressure. Chunk bytes between the
 * reader and the socket are bounded by a window, so memory stays flat for any file size.
 * Each chunk lives in one pooled buffer from its copy out of the read buffer until gRPC has
 * framed the message carrying it (the worker compresses it in place), so a snapshot
 * allocates next to nothing per chunk.
 */
export class Uploader {
  readonly stats: UploadStats = { blobsOffered: 0, blobsUploaded: 0, bytesUploaded: 0 };
  private readonly asked: Asked[] = [];
  private findInFlight = 0;
  private flushScheduled = false;
  private readonly offered = new Set<string>();
  private windowUsed = 0;
  private windowWaiters: Array<() => void> = [];
  private readonly tasks = new Set<Promise<void>>();
  private failure: unknown;
  private readonly streams: UploadStream[];
  /** Keeps as many free bytes as can be out at once: the window plus what the streams queue. */
  private readonly buffers: BufferPool;
  private nextStream = 0;

  constructor(
    private readonly conn: Connection,
    private readonly sessionId: string,
    private readonly pool: CompressPool,
  ) {
    this.buffers = new BufferPool(SNAPSHOT_WINDOW_BYTES + conn.channelCount * UPLOAD_STREAM_QUEUE_BYTES);
    this.streams = Array.from({ length: conn.channelCount }, (_, i) => {
      const stream = new UploadStream(conn, i, sessionId, (blobs) => {
        for (const b of blobs) this.buffers.give(b.data);
      });
      stream.result.catch((err) => this.fail(err));
      return stream;
    });
  }

  private fail(err: unknown): void {
    this.failure ??= err;
    for (const w of this.windowWaiters.splice(0)) w();
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure;
  }

  /**
   * Hands a blob over. Resolves once the blob has a place in the window (not when it is
   * uploaded), so the caller keeps reading while earlier chunks are compressed and sent.
   * `raw` is copied once it has its place, so the caller may reuse it when this resolves.
   */
  offer(id: Buffer, raw: Buffer, kind: BlobKind): Promise<void> {
    return this.admit(id, raw, (own) => this.process(id, own, kind));
  }

  /**
   * A data chunk already compressed (or found not worth it) by the caller: `stored` holds
   * the bytes to upload, zstd when `compressed`. Same window and copy rule as offer().
   */
  offerPacked(id: Buffer, stored: Buffer, rawLength: number, compressed: boolean): Promise<void> {
    return this.admit(id, stored, async (own) => {
      if (!(await this.isMissing(id))) return this.buffers.give(own);
      await this.send({ id, kind: 'DATA', compression: compressed ? 'ZSTD' : 'NONE', rawLength, data: own });
    });
  }

  private async admit(id: Buffer, bytes: Buffer, then: (own: Buffer) => Promise<void>): Promise<void> {
    this.throwIfFailed();
    this.stats.blobsOffered++;
    const hex = toHex(id);
    if (this.offered.has(hex)) return;
    if (this.offered.size >= MAX_REMEMBERED_IDS) this.offered.clear();
    this.offered.add(hex);
    const cost = bytes.length + 256;
    while (this.windowUsed > 0 && (this.windowUsed + cost > SNAPSHOT_WINDOW_BYTES || this.tasks.size >= SNAPSHOT_WINDOW_BLOBS) && !this.failure) {
      await new Promise<void>((resolve) => this.windowWaiters.push(resolve));
    }
    this.throwIfFailed();
    this.windowUsed += cost;
    const own = this.buffers.take(bytes.length);
    bytes.copy(own);
    const task = then(own).then(
      () => undefined,
      (err) => this.fail(err),
    );
    const tracked = task.finally(() => {
      this.windowUsed -= cost;
      this.tasks.delete(tracked);
      const waiters = this.windowWaiters.splice(0);
      for (const w of waiters) w();
    });
    this.tasks.add(tracked);
  }

  private async process(id: Buffer, raw: Buffer, kind: BlobKind): Promise<void> {
    if (!(await this.isMissing(id))) {
      this.buffers.give(raw);
      return;
    }
    const rawLength = raw.length;
    const packed = await this.pool.compress(raw);
    await this.send({ id, kind, compression: packed.compressed ? 'ZSTD' : 'NONE', rawLength, data: packed.data });
  }

  private isMissing(id: Buffer): Promise<boolean> {
    return new Promise<boolean>((resolve, reject) => {
      this.asked.push({ id, resolve, reject });
      if (this.asked.length >= FIND_MISSING_BATCH) this.flushAsked();
      else if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => {
          this.flushScheduled = false;
          this.flushAsked();
        });
      }
    });
  }

  private flushAsked(): void {
    while (this.asked.length > 0 && this.findInFlight < MAX_FIND_MISSING_IN_FLIGHT) {
      const batch = this.asked.splice(0, FIND_MISSING_BATCH);
      this.findInFlight++;
      this.conn
        .unary<{ missing: Buffer[] }>('FindMissing', { sessionId: this.sessionId, ids: batch.map((a) => a.id) })
        .then(
          (reply) => {
            const missing = new Set(reply.missing.map(toHex));
            for (const a of batch) a.resolve(missing.has(toHex(a.id)));
          },
          (err) => {
            for (const a of batch) a.reject(err);
          },
        )
        .finally(() => {
          this.findInFlight--;
          this.flushAsked();
        });
    }
  }

  private async send(blob: Blob): Promise<void> {
    const s = this.streams[this.nextStream++ % this.streams.length];
    this.stats.blobsUploaded++;
    this.stats.bytesUploaded += blob.data.length;
    await s.add(blob);
  }

  /** Waits for every offered blob to be decided and sent, closes the streams, returns the server's totals. */
  async finish(): Promise<UploadReply[]> {
    while (this.tasks.size > 0) await Promise.all([...this.tasks]);
    this.throwIfFailed();
    const replies = await Promise.all(this.streams.map((s) => s.end()));
    this.throwIfFailed();
    return replies;
  }

  abort(): void {
    for (const s of this.streams) s.cancel();
  }
}

import { once } from 'node:events';
import type * as grpc from '@grpc/grpc-js';
import { toHex } from '../common/hash.js';
import type { Blob, BlobKind, UploadReply } from '../common/messages.js';
import type { CompressPool } from './compress-pool.js';
import type { Connection } from './connection.js';
import { FIND_MISSING_BATCH, SNAPSHOT_WINDOW_BLOBS, SNAPSHOT_WINDOW_BYTES, UPLOAD_MESSAGE_BLOBS, UPLOAD_MESSAGE_BYTES } from './limits.js';

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
  private readonly streams: Array<{ call: grpc.ClientWritableStream<unknown>; result: Promise<UploadReply>; batch: Blob[]; batchBytes: number; drained?: Promise<void> }>;
  private nextStream = 0;

  constructor(
    private readonly conn: Connection,
    private readonly sessionId: string,
    private readonly pool: CompressPool,
  ) {
    this.streams = Array.from({ length: conn.channelCount }, (_, i) => {
      const { call, result } = conn.clientStream<UploadReply>('Upload', i);
      result.catch((err) => this.fail(err));
      return { call, result, batch: [], batchBytes: 0 };
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
   * `raw` must own its ArrayBuffer: it is transferred to a compression worker.
   */
  async offer(id: Buffer, raw: Buffer, kind: BlobKind): Promise<void> {
    this.throwIfFailed();
    this.stats.blobsOffered++;
    const hex = toHex(id);
    if (this.offered.has(hex)) return;
    if (this.offered.size >= MAX_REMEMBERED_IDS) this.offered.clear();
    this.offered.add(hex);
    const cost = raw.length + 256;
    while (this.windowUsed > 0 && (this.windowUsed + cost > SNAPSHOT_WINDOW_BYTES || this.tasks.size >= SNAPSHOT_WINDOW_BLOBS) && !this.failure) {
      await new Promise<void>((resolve) => this.windowWaiters.push(resolve));
    }
    this.throwIfFailed();
    this.windowUsed += cost;
    const task = this.process(id, raw, kind).then(
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
    if (!(await this.isMissing(id))) return;
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
    s.batch.push(blob);
    s.batchBytes += blob.data.length;
    this.stats.blobsUploaded++;
    this.stats.bytesUploaded += blob.data.length;
    if (s.batchBytes >= UPLOAD_MESSAGE_BYTES || s.batch.length >= UPLOAD_MESSAGE_BLOBS) await this.writeBatch(s);
  }

  private async writeBatch(s: (typeof this.streams)[number]): Promise<void> {
    if (s.batch.length === 0) return;
    // One shared wait per stream: concurrent senders queue behind it instead of each piling
    // more bytes into a stream that already said stop.
    while (s.drained) await s.drained;
    const msg = { sessionId: this.sessionId, blobs: s.batch };
    s.batch = [];
    s.batchBytes = 0;
    if (!s.call.write(msg)) {
      s.drained = Promise.race([once(s.call, 'drain').then(() => undefined), s.result.then(() => undefined)]).finally(() => (s.drained = undefined));
      await s.drained;
    }
  }

  /** Waits for every offered blob to be decided and sent, closes the streams, returns the server's totals. */
  async finish(): Promise<UploadReply[]> {
    while (this.tasks.size > 0) await Promise.all([...this.tasks]);
    this.throwIfFailed();
    for (const s of this.streams) {
      await this.writeBatch(s);
      s.call.end();
    }
    const replies = await Promise.all(this.streams.map((s) => s.result));
    this.throwIfFailed();
    return replies;
  }

  abort(): void {
    for (const s of this.streams) s.call.cancel();
  }
}

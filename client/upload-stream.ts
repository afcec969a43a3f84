import type * as grpc from '@grpc/grpc-js';
import type { Blob, UploadReply } from '../common/messages.js';
import { MAX_TREE_BLOB_BYTES } from '../common/tree.js';
import type { Connection } from './connection.js';
import { UPLOAD_MESSAGE_BLOBS, UPLOAD_MESSAGE_BYTES, UPLOAD_STREAM_QUEUE_BYTES } from './limits.js';
import { UploadEncoder } from './upload-encoder.js';

/**
 * One Upload call: batches blobs into ~1 MiB messages and writes them, keeping at most
 * UPLOAD_STREAM_QUEUE_BYTES written but not yet taken by gRPC. The stream's own high-water
 * mark is sixteen messages, which let a hundred megabytes of chunks pile up past the
 * snapshot window. `sent` gets each message's blobs once gRPC has framed them: their
 * buffers are free then.
 */
export class UploadStream {
  readonly result: Promise<UploadReply>;
  private readonly call: grpc.ClientWritableStream<unknown>;
  private batch: Blob[] = [];
  private batchBytes = 0;
  private batchTreeBytes = 0;
  private queued = 0;
  private settled = false;
  private waiting: Promise<void> | undefined;
  private wake: (() => void) | undefined;
  private flushing: Promise<void> | undefined;

  constructor(
    conn: Connection,
    channel: number,
    sessionId: string,
    private readonly sent: (blobs: Blob[]) => void,
  ) {
    const encoder = new UploadEncoder(sessionId);
    const { call, result } = conn.clientStream<UploadReply>('Upload', channel, (blobs: Blob[]) => encoder.encode(blobs));
    this.call = call;
    this.result = result;
    call.on('drain', () => this.progress());
    const settle = () => {
      this.settled = true;
      this.progress();
    };
    result.then(settle, settle);
  }

  /**
   * Adds a blob to the next message; resolves once any message it completed is written.
   * While a full message waits for the stream, new blobs wait here, before joining a batch:
   * a blob that joins one returns at once and frees its place in the snapshot window, so
   * without the wait every full batch could queue behind the last (measured: 82,000 small
   * blobs, 480 MiB of client RSS, at 200k files).
   */
  async add(blob: Blob): Promise<void> {
    while (this.flushing) await this.flushing;
    // The server takes at most one tree's worth of raw tree bytes per message. Checked again
    // after each wait: a concurrent add may have put a tree into the fresh batch meanwhile.
    while (blob.kind === 'TREE' && this.batch.length > 0 && this.batchTreeBytes + blob.rawLength > MAX_TREE_BLOB_BYTES) {
      await this.cut();
      while (this.flushing) await this.flushing;
    }
    this.batch.push(blob);
    this.batchBytes += blob.data.length;
    if (blob.kind === 'TREE') this.batchTreeBytes += blob.rawLength;
    if (this.batchBytes >= UPLOAD_MESSAGE_BYTES || this.batch.length >= UPLOAD_MESSAGE_BLOBS) await this.cut();
  }

  private async cut(): Promise<void> {
    this.flushing = this.flush().finally(() => (this.flushing = undefined));
    await this.flushing;
  }

  /** Writes the pending blobs as one message, after waiting for the stream to have room. */
  async flush(): Promise<void> {
    if (this.batch.length === 0) return;
    // The message is cut before the wait, so concurrent senders each write their own instead
    // of piling every blob that arrives meanwhile into one message of the whole window.
    const blobs = this.batch;
    const bytes = this.batchBytes;
    this.batch = [];
    this.batchBytes = 0;
    this.batchTreeBytes = 0;
    while (this.busy()) await (this.waiting ??= new Promise<void>((resolve) => (this.wake = resolve)));
    this.queued += bytes;
    this.call.write(blobs, (err: unknown) => {
      this.queued -= bytes;
      // After a failed write gRPC may still hold the message: its buffers are not reused.
      if (!err) this.sent(blobs);
      this.progress();
    });
  }

  async end(): Promise<UploadReply> {
    await this.flush();
    this.call.end();
    return this.result;
  }

  cancel(): void {
    this.call.cancel();
  }

  private busy(): boolean {
    return !this.settled && (this.queued >= UPLOAD_STREAM_QUEUE_BYTES || this.call.writableNeedDrain);
  }

  private progress(): void {
    const wake = this.wake;
    this.waiting = undefined;
    this.wake = undefined;
    wake?.();
  }
}

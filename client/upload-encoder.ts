import { blobSize, varintSize, writeBlob, writeBytesField, writeVarint } from '../common/blob-codec.js';
import type { Blob } from '../common/messages.js';

/** UploadRequest: session_id = 1, repeated Blob blobs = 2 (proto/cairn.proto). */
const K_SESSION = (1 << 3) | 2;
const K_BLOBS = (2 << 3) | 2;

/**
 * Encodes UploadRequest messages into one buffer it reuses. protobufjs allocates a fresh
 * buffer per ~1 MiB message, external memory that cost full collections; gRPC copies the
 * encoded bytes into its own frame before it takes the next message of a stream (the write
 * callback fires after that), so one encoder per stream is never overwritten early.
 * A test decodes the output with protobufjs from the proto file.
 */
export class UploadEncoder {
  private buf = Buffer.allocUnsafeSlow(64 * 1024);
  private readonly session: Buffer;

  constructor(sessionId: string) {
    this.session = Buffer.from(sessionId, 'utf8');
  }

  /** The encoded message: a view of the encoder's buffer, valid until the next encode(). */
  encode(blobs: readonly Blob[]): Buffer {
    const sizes = blobs.map(blobSize);
    let size = this.session.length > 0 ? 1 + varintSize(this.session.length) + this.session.length : 0;
    for (const n of sizes) size += 1 + varintSize(n) + n;
    if (this.buf.length < size) this.buf = Buffer.allocUnsafeSlow(Math.max(size, this.buf.length * 2));
    let pos = this.session.length > 0 ? writeBytesField(this.buf, 0, K_SESSION, this.session) : 0;
    blobs.forEach((b, i) => {
      this.buf[pos++] = K_BLOBS;
      pos = writeVarint(this.buf, pos, sizes[i]);
      pos = writeBlob(this.buf, pos, b);
    });
    return this.buf.subarray(0, pos);
  }
}

import type { Blob } from './messages.js';

const KIND_NUMBERS: Record<string, number> = { DATA: 0, TREE: 1 };
const COMPRESSION_NUMBERS: Record<string, number> = { NONE: 0, ZSTD: 1 };

/**
 * Encodes the `Blob` message of proto/cairn.proto (id = 1, kind = 2, compression = 3,
 * raw_length = 4, data = 5; zero values left out, as proto3 allows) into one buffer that
 * is reused from message to message. protobufjs allocated a fresh buffer per chunk, and a
 * gigabyte of those a minute was most of a restore's garbage collection. The result is valid
 * until the next call: grpc-js copies it into its frame before send returns.
 * test/blob-codec.test.ts decodes the output with protobufjs.
 */
export class BlobEncoder {
  private buf = Buffer.allocUnsafeSlow(64 * 1024);
  private pos = 0;

  encode(b: Blob): Buffer {
    const need = b.id.length + b.data.length + 32;
    if (this.buf.length < need) this.buf = Buffer.allocUnsafeSlow(Math.max(need, this.buf.length * 2));
    this.pos = 0;
    if (b.id.length > 0) this.bytes(0x0a, b.id);
    this.varintField(0x10, KIND_NUMBERS[b.kind] ?? 0);
    this.varintField(0x18, COMPRESSION_NUMBERS[b.compression] ?? 0);
    this.varintField(0x20, b.rawLength);
    if (b.data.length > 0) this.bytes(0x2a, b.data);
    return this.buf.subarray(0, this.pos);
  }

  private varintField(tag: number, v: number): void {
    if (v === 0) return;
    this.buf[this.pos++] = tag;
    this.varint(v);
  }

  private varint(v: number): void {
    v >>>= 0;
    while (v > 0x7f) {
      this.buf[this.pos++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    this.buf[this.pos++] = v;
  }

  private bytes(tag: number, data: Uint8Array): void {
    this.buf[this.pos++] = tag;
    this.varint(data.length);
    this.buf.set(data, this.pos);
    this.pos += data.length;
  }
}

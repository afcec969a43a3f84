import type { Blob } from './messages.js';

/**
 * The `Blob` message of proto/cairn.proto by hand: id = 1, kind = 2, compression = 3,
 * raw_length = 4, data = 5, zero values left out as proto3 allows. Blobs are the bulk of
 * every upload and restore, and protobufjs allocated a fresh buffer for each message: at a
 * gigabyte a minute that garbage cost more CPU than the encoding. Encoders here write into
 * buffers their owners reuse. test/blob-codec.test.ts and test/upload-encoder.test.ts decode
 * the output with protobufjs from the proto file, so the field numbers are checked there.
 */
const K_ID = (1 << 3) | 2;
const K_KIND = 2 << 3;
const K_COMPRESSION = 3 << 3;
const K_RAW_LENGTH = 4 << 3;
const K_DATA = (5 << 3) | 2;
const KINDS: Record<string, number> = { DATA: 0, TREE: 1 };
const COMPRESSIONS: Record<string, number> = { NONE: 0, ZSTD: 1 };

export function varintSize(v: number): number {
  let n = 1;
  while (v > 0x7f) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

/** Writes `v` at `pos`; returns the position after it. */
export function writeVarint(buf: Buffer, pos: number, v: number): number {
  while (v > 0x7f) {
    buf[pos++] = (v & 0x7f) | 0x80;
    v = Math.floor(v / 128);
  }
  buf[pos++] = v;
  return pos;
}

/** Writes a length-delimited field; returns the position after it. */
export function writeBytesField(buf: Buffer, pos: number, key: number, v: Uint8Array): number {
  buf[pos++] = key;
  pos = writeVarint(buf, pos, v.length);
  buf.set(v, pos);
  return pos + v.length;
}

function varintFieldSize(v: number): number {
  return v === 0 ? 0 : 1 + varintSize(v);
}

function bytesFieldSize(v: Uint8Array): number {
  return v.length === 0 ? 0 : 1 + varintSize(v.length) + v.length;
}

/** Bytes of an encoded Blob (without a key or length around it). */
export function blobSize(b: Blob): number {
  return bytesFieldSize(b.id) + varintFieldSize(KINDS[b.kind]) + varintFieldSize(COMPRESSIONS[b.compression]) + varintFieldSize(b.rawLength) + bytesFieldSize(b.data);
}

/** Writes a Blob's fields at `pos` (blobSize(b) bytes); returns the position after them. */
export function writeBlob(buf: Buffer, pos: number, b: Blob): number {
  if (b.id.length > 0) pos = writeBytesField(buf, pos, K_ID, b.id);
  pos = writeVarintField(buf, pos, K_KIND, KINDS[b.kind]);
  pos = writeVarintField(buf, pos, K_COMPRESSION, COMPRESSIONS[b.compression]);
  pos = writeVarintField(buf, pos, K_RAW_LENGTH, b.rawLength);
  if (b.data.length > 0) pos = writeBytesField(buf, pos, K_DATA, b.data);
  return pos;
}

/** A varint field, left out when zero as proto3 does; returns the position after it. */
function writeVarintField(buf: Buffer, pos: number, key: number, v: number): number {
  if (v === 0) return pos;
  buf[pos++] = key;
  return writeVarint(buf, pos, v);
}

/**
 * One Blob message per call, for a stream of them (ReadChunks replies). The result is a view
 * valid until the next call: grpc-js copies it into its frame before send returns.
 */
export class BlobEncoder {
  private buf = Buffer.allocUnsafeSlow(64 * 1024);

  encode(b: Blob): Buffer {
    const size = blobSize(b);
    if (this.buf.length < size) this.buf = Buffer.allocUnsafeSlow(Math.max(size, this.buf.length * 2));
    return this.buf.subarray(0, writeBlob(this.buf, 0, b));
  }
}

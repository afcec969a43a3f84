import type { Blob, BlobKind, CompressionName } from '../common/messages.js';
import { protoRoot } from '../common/proto.js';

const uploadType = protoRoot.lookupType('cairn.v1.UploadRequest');
const blobType = protoRoot.lookupType('cairn.v1.Blob');
const WIRE_VARINT = 0;
const WIRE_BYTES = 2;

/** A field's key byte, from the field number in proto/cairn.proto (all of these fit one byte). */
function key(type: typeof uploadType, field: string, wire: number): number {
  const k = (type.fields[field].id << 3) | wire;
  if (k > 0x7f) throw new Error(`field ${type.name}.${field} needs a multi-byte key`);
  return k;
}

const K_SESSION = key(uploadType, 'sessionId', WIRE_BYTES);
const K_BLOBS = key(uploadType, 'blobs', WIRE_BYTES);
const K_ID = key(blobType, 'id', WIRE_BYTES);
const K_KIND = key(blobType, 'kind', WIRE_VARINT);
const K_COMPRESSION = key(blobType, 'compression', WIRE_VARINT);
const K_RAW_LENGTH = key(blobType, 'rawLength', WIRE_VARINT);
const K_DATA = key(blobType, 'data', WIRE_BYTES);
const KINDS = protoRoot.lookupEnum('cairn.v1.BlobKind').values as Record<BlobKind, number>;
const COMPRESSIONS = protoRoot.lookupEnum('cairn.v1.Compression').values as Record<CompressionName, number>;

/**
 * Encodes UploadRequest messages into one buffer it reuses. protobufjs allocates a fresh
 * buffer per ~1 MiB message, external memory that cost full collections; gRPC copies the
 * encoded bytes into its own frame before it takes the next message of a stream (the write
 * callback fires after that), so one encoder per stream is never overwritten early.
 * Fields go in number order with proto3 defaults omitted; the proto file is the definition
 * (keys and enum values are read from it), and a test decodes the output with protobufjs.
 */
export class UploadEncoder {
  private buf = Buffer.allocUnsafeSlow(64 * 1024);
  private pos = 0;
  private readonly session: Buffer;

  constructor(sessionId: string) {
    this.session = Buffer.from(sessionId, 'utf8');
  }

  /** The encoded message: a view of the encoder's buffer, valid until the next encode(). */
  encode(blobs: readonly Blob[]): Buffer {
    let size = this.session.length > 0 ? 1 + varintSize(this.session.length) + this.session.length : 0;
    for (const b of blobs) {
      const n = blobSize(b);
      size += 1 + varintSize(n) + n;
    }
    if (this.buf.length < size) this.buf = Buffer.allocUnsafeSlow(Math.max(size, this.buf.length * 2));
    this.pos = 0;
    if (this.session.length > 0) this.bytes(K_SESSION, this.session);
    for (const b of blobs) {
      this.buf[this.pos++] = K_BLOBS;
      this.varint(blobSize(b));
      if (b.id.length > 0) this.bytes(K_ID, b.id);
      this.optionalVarint(K_KIND, KINDS[b.kind]);
      this.optionalVarint(K_COMPRESSION, COMPRESSIONS[b.compression]);
      this.optionalVarint(K_RAW_LENGTH, b.rawLength);
      if (b.data.length > 0) this.bytes(K_DATA, b.data);
    }
    return this.buf.subarray(0, this.pos);
  }

  private bytes(k: number, v: Uint8Array): void {
    this.buf[this.pos++] = k;
    this.varint(v.length);
    this.buf.set(v, this.pos);
    this.pos += v.length;
  }

  private optionalVarint(k: number, v: number): void {
    if (v === 0) return;
    this.buf[this.pos++] = k;
    this.varint(v);
  }

  private varint(v: number): void {
    while (v > 0x7f) {
      this.buf[this.pos++] = (v & 0x7f) | 0x80;
      v = Math.floor(v / 128);
    }
    this.buf[this.pos++] = v;
  }
}

function blobSize(b: Blob): number {
  let n = b.id.length > 0 ? 1 + varintSize(b.id.length) + b.id.length : 0;
  if (KINDS[b.kind] !== 0) n += 1 + varintSize(KINDS[b.kind]);
  if (COMPRESSIONS[b.compression] !== 0) n += 1 + varintSize(COMPRESSIONS[b.compression]);
  if (b.rawLength !== 0) n += 1 + varintSize(b.rawLength);
  if (b.data.length > 0) n += 1 + varintSize(b.data.length) + b.data.length;
  return n;
}

function varintSize(v: number): number {
  let n = 1;
  while (v > 0x7f) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

import { describe, expect, it } from 'vitest';
import { BufferPool, sizeClass } from '../client/buffer-pool.js';
import { UploadEncoder } from '../client/upload-encoder.js';
import type { Blob } from '../common/messages.js';
import { CairnService, CONVERSION, protoRoot } from '../common/proto.js';

const uploadType = protoRoot.lookupType('cairn.v1.UploadRequest');
/** What the server decodes: the Upload method's own deserializer from proto-loader. */
const decodeAsServer = CairnService.service.Upload.requestDeserialize as (b: Buffer) => { sessionId: string; blobs: Blob[] };

function blob(over: Partial<Blob>): Blob {
  return { id: Buffer.alloc(32, 7), kind: 'DATA', compression: 'NONE', rawLength: 0, data: Buffer.alloc(0), ...over };
}

function decodedLikeLoader(bytes: Buffer) {
  return uploadType.toObject(uploadType.decode(bytes), CONVERSION);
}

describe('UploadEncoder', () => {
  const blobs: Blob[] = [
    blob({ id: Buffer.alloc(32, 1), kind: 'DATA', compression: 'ZSTD', rawLength: 1 << 20, data: Buffer.from('compressed bytes') }),
    blob({ id: Buffer.alloc(32, 2), kind: 'TREE', compression: 'NONE', rawLength: 0, data: Buffer.alloc(0) }),
    blob({ id: Buffer.alloc(32, 3), kind: 'DATA', compression: 'NONE', rawLength: 0xffffffff, data: Buffer.alloc(300_000, 9) }),
    blob({ id: Buffer.alloc(32, 4), kind: 'TREE', compression: 'ZSTD', rawLength: 127, data: Buffer.from([0x80]) }),
    blob({ id: Buffer.alloc(32, 5), kind: 'DATA', compression: 'NONE', rawLength: 128, data: Buffer.alloc(128, 0xfe) }),
  ];

  it('writes what protobufjs and the server decode back to the same message', () => {
    const bytes = new UploadEncoder('session-ü-42').encode(blobs);
    for (const decoded of [decodeAsServer(Buffer.from(bytes)), decodedLikeLoader(Buffer.from(bytes))]) {
      expect(decoded.sessionId).toBe('session-ü-42');
      expect(decoded.blobs).toHaveLength(blobs.length);
      decoded.blobs.forEach((b: Blob, i: number) => {
        expect(Buffer.from(b.id).equals(blobs[i].id)).toBe(true);
        expect(b.kind).toBe(blobs[i].kind);
        expect(b.compression).toBe(blobs[i].compression);
        expect(b.rawLength).toBe(blobs[i].rawLength);
        expect(Buffer.from(b.data).equals(blobs[i].data)).toBe(true);
      });
    }
  });

  it('decodes to the same message as protobufjs encoding the same blobs', () => {
    const mine = new UploadEncoder('s').encode(blobs);
    const theirs = uploadType.encode(uploadType.fromObject({ sessionId: 's', blobs })).finish();
    expect(decodedLikeLoader(Buffer.from(mine))).toEqual(decodedLikeLoader(Buffer.from(theirs)));
  });

  it('encodes an empty session and an empty message', () => {
    const enc = new UploadEncoder('');
    expect(enc.encode([]).length).toBe(0);
    const decoded = decodeAsServer(Buffer.from(enc.encode([blob({})])));
    expect(decoded.sessionId).toBe('');
    expect(decoded.blobs).toHaveLength(1);
    expect(decoded.blobs[0].data.length).toBe(0);
  });

  it('reuses its buffer and grows it for a larger message', () => {
    const enc = new UploadEncoder('s');
    const small = enc.encode([blobs[0]]);
    const smallAgain = enc.encode([blobs[1]]);
    expect(smallAgain.buffer).toBe(small.buffer);
    const big = enc.encode([blob({ data: Buffer.alloc(5 << 20, 3), rawLength: 5 << 20 })]);
    expect(decodeAsServer(Buffer.from(big)).blobs[0].data.length).toBe(5 << 20);
  });

  it('takes its keys from proto/cairn.proto', () => {
    const b = protoRoot.lookupType('cairn.v1.Blob');
    expect([b.fields.id.id, b.fields.kind.id, b.fields.compression.id, b.fields.rawLength.id, b.fields.data.id]).toEqual([1, 2, 3, 4, 5]);
    const bytes = new UploadEncoder('x').encode([blobs[0]]);
    // session_id: field 1, length-delimited; then blobs: field 2, length-delimited.
    expect(bytes[0]).toBe((uploadType.fields.sessionId.id << 3) | 2);
    expect(bytes[3]).toBe((uploadType.fields.blobs.id << 3) | 2);
  });
});

describe('BufferPool', () => {
  it('hands a given-back buffer out again, also for a somewhat smaller chunk', () => {
    const pool = new BufferPool(1 << 20);
    const a = pool.take(100_000);
    expect(a.length).toBe(100_000);
    expect(a.byteOffset).toBe(0);
    const ab = a.buffer;
    pool.give(a);
    expect(pool.take(90_000).buffer).toBe(ab);
  });

  it('keeps no more than its bound of free bytes, evicting other sizes first', () => {
    const pool = new BufferPool(300_000);
    const small = Array.from({ length: 20 }, () => pool.take(10_000));
    const big = pool.take(200_000);
    for (const b of small) pool.give(b);
    expect(pool.retainedBytes).toBeLessThanOrEqual(300_000);
    pool.give(big);
    expect(pool.retainedBytes).toBeLessThanOrEqual(300_000);
    expect(pool.take(200_000).buffer).toBe(big.buffer);
  });

  it('ignores a buffer that was transferred away', () => {
    const pool = new BufferPool(1 << 20);
    const a = pool.take(5000);
    structuredClone(a.buffer, { transfer: [a.buffer] });
    pool.give(a);
    expect(pool.retainedBytes).toBe(0);
  });

  it('rounds sizes to classes that waste at most a quarter', () => {
    for (const n of [1, 1024, 1025, 4097, 100_000, 1 << 20, (1 << 20) + 1, 4 << 20]) {
      const c = sizeClass(n);
      expect(c).toBeGreaterThanOrEqual(n);
      expect(sizeClass(c)).toBe(c);
      if (n > 1024) expect(c).toBeLessThanOrEqual(n * 1.25 + 1);
    }
  });
});

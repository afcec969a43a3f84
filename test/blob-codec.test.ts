import { describe, expect, it } from 'vitest';
import { BlobEncoder } from '../common/blob-codec.js';
import type { Blob } from '../common/messages.js';
import { CONVERSION, protoRoot } from '../common/proto.js';

const BlobType = protoRoot.lookupType('cairn.v1.Blob');

function decode(bytes: Buffer): Blob {
  const o = BlobType.toObject(BlobType.decode(bytes), CONVERSION) as Blob;
  return { ...o, id: Buffer.from(o.id), data: Buffer.from(o.data) };
}

describe('BlobEncoder', () => {
  it('writes what protobufjs reads back as the same Blob, zero values included', () => {
    const enc = new BlobEncoder();
    const cases: Blob[] = [
      { id: Buffer.alloc(32, 1), kind: 'DATA', compression: 'ZSTD', rawLength: 1 << 20, data: Buffer.alloc(70_000, 7) },
      { id: Buffer.alloc(32, 2), kind: 'TREE', compression: 'NONE', rawLength: 3, data: Buffer.from('abc') },
      { id: Buffer.alloc(32, 3), kind: 'DATA', compression: 'NONE', rawLength: 0, data: Buffer.alloc(0) },
      { id: Buffer.alloc(32, 4), kind: 'DATA', compression: 'ZSTD', rawLength: 4 * 1024 * 1024, data: Buffer.alloc(200, 9) },
      { id: Buffer.alloc(0), kind: 'DATA', compression: 'NONE', rawLength: 2 ** 32 - 1, data: Buffer.alloc(1, 1) },
    ];
    for (const b of cases) expect(decode(Buffer.from(enc.encode(b)))).toEqual(b);
  });

  it('each result is valid until the next call, which reuses the buffer', () => {
    const enc = new BlobEncoder();
    const a = enc.encode({ id: Buffer.alloc(32, 1), kind: 'DATA', compression: 'NONE', rawLength: 1, data: Buffer.from('a') });
    const first = Buffer.from(a);
    const b = enc.encode({ id: Buffer.alloc(32, 2), kind: 'DATA', compression: 'NONE', rawLength: 1, data: Buffer.from('b') });
    expect(b.buffer).toBe(a.buffer);
    expect(decode(first).data.toString()).toBe('a');
    expect(decode(Buffer.from(b)).data.toString()).toBe('b');
  });
});

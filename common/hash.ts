import { blake3, Blake3Hasher } from '@napi-rs/blake-hash';

/**
 * BLAKE3-256, the id of every chunk, tree, pack and snapshot. One function so the
 * implementation can change by measurement: @napi-rs/blake-hash ships a prebuilt addon
 * (no overrides, no build) and hashes small buffers ~5x faster than the `blake3` package,
 * which creates a stream per call.
 */
export function hash(data: Uint8Array): Buffer {
  return blake3(asBuffer(data));
}

function asBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

/** `hash` of bytes that arrive in pieces: the digest equals hash() of them all joined. */
export class IncrementalHash {
  private readonly hasher = new Blake3Hasher();

  update(data: Uint8Array): void {
    this.hasher.update(asBuffer(data));
  }

  digest(): Buffer {
    return this.hasher.digestBuffer();
  }
}

export const ID_BYTES = 32;

export function toHex(id: Uint8Array): string {
  return Buffer.from(id.buffer, id.byteOffset, id.byteLength).toString('hex');
}

const HEX_ID = /^[0-9a-f]{64}$/;

export function isHexId(s: string): boolean {
  return HEX_ID.test(s);
}

export function fromHex(hex: string): Buffer {
  return Buffer.from(hex, 'hex');
}

export function shortId(hex: string): string {
  return hex.slice(0, 8);
}

import binding from 'zstd-napi/binding.js';
import { CairnError, Code } from './errors.js';

/** Stored raw when zstd saves less than this share: decompressing it later would cost more than it saves. */
export const MIN_SAVING = 0.03;
export const DEFAULT_LEVEL = 3;

/**
 * Blobs at least this long have a sample compressed at level 1 before their level is chosen;
 * below it the sample would cost a good share of compressing the whole blob.
 */
export const SAMPLE_FROM = 128 * 1024;
export const SAMPLE_BYTES = 64 * 1024;
/**
 * A sample that level 1 shrinks by less than this marks data (float32 weights and activations,
 * media) on which level 3 saves no more than level 1 but costs ~40% more CPU. Measured on the
 * benchmark's 1 GiB: 904.5 MiB stored against 905.1 with level 3 throughout, for 20% less
 * compression CPU (1.33 against 1.65 s).
 */
export const POOR_SAVING = 0.1;

export interface Packed {
  data: Buffer;
  compressed: boolean;
}

/**
 * Holds one zstd context and one output buffer for its whole life: per-call allocation
 * halves the speed on incompressible data, and garbage output buffers pile up in memory
 * faster than the garbage collector returns them.
 */
export class BlobCompressor {
  private readonly cctx = new binding.CCtx();
  private out = Buffer.alloc(0);

  constructor(private readonly level = DEFAULT_LEVEL) {}

  /**
   * The compressed bytes as a view of the reused output buffer, valid until the next call;
   * undefined when the blob is to be stored raw (zstd saved less than MIN_SAVING).
   */
  pack(raw: Buffer): Buffer | undefined {
    const bound = binding.compressBound(raw.length);
    if (this.out.length < bound) this.out = Buffer.allocUnsafeSlow(bound);
    const n = this.cctx.compress(this.out, raw, this.levelFor(raw));
    return n > raw.length * (1 - MIN_SAVING) ? undefined : this.out.subarray(0, n);
  }

  /** The repository's level, or 1 for a large blob whose first bytes compress poorly at level 1. */
  private levelFor(raw: Buffer): number {
    if (this.level <= 1 || raw.length < SAMPLE_FROM) return this.level;
    const n = this.cctx.compress(this.out, raw.subarray(0, SAMPLE_BYTES), 1);
    return n > SAMPLE_BYTES * (1 - POOR_SAVING) ? 1 : this.level;
  }
}

/**
 * Inflates into a buffer of exactly the declared raw length, so a hostile frame that claims
 * (or really holds) more bytes can never make us allocate more than the limit we checked first.
 */
export class BlobDecompressor {
  private readonly dctx = new binding.DCtx();

  /**
   * `into`, when given, is a scratch buffer of at least `rawLength` bytes that the caller
   * reuses: the result is then a view into it, valid until the next call with it. A fresh
   * buffer per blob is garbage the collector has to find, and at a gigabyte a minute that
   * collection cost more CPU than the inflating.
   */
  decompress(data: Uint8Array, rawLength: number, what: string, into?: Buffer): Buffer {
    let declared: number | null;
    try {
      declared = binding.getFrameContentSize(data);
    } catch (err) {
      throw new CairnError(Code.INVALID_ARGUMENT, `${what}: not a zstd frame (${(err as Error).message})`);
    }
    if (declared !== null && declared !== rawLength) {
      throw new CairnError(Code.INVALID_ARGUMENT, `${what}: zstd frame declares ${declared} bytes but the blob says ${rawLength}`);
    }
    // One frame and nothing after it: zstd skips padding ("skippable") frames, so bytes behind
    // the first frame would pass the hash and be stored, and served, at any size.
    let frame: number;
    try {
      frame = binding.findFrameCompressedSize(data);
    } catch (err) {
      throw new CairnError(Code.INVALID_ARGUMENT, `${what}: not a complete zstd frame (${(err as Error).message})`);
    }
    if (frame !== data.length) {
      throw new CairnError(Code.INVALID_ARGUMENT, `${what}: ${data.length - frame} bytes follow its zstd frame of ${frame} bytes`);
    }
    const out = into && into.length >= rawLength ? into.subarray(0, rawLength) : Buffer.allocUnsafe(rawLength);
    let written: number;
    try {
      written = this.dctx.decompress(out, data);
    } catch (err) {
      throw new CairnError(Code.INVALID_ARGUMENT, `${what}: not a valid zstd frame of ${rawLength} bytes (${(err as Error).message})`);
    }
    if (written !== rawLength) {
      throw new CairnError(Code.INVALID_ARGUMENT, `${what}: inflated to ${written} bytes, expected ${rawLength}`);
    }
    return out;
  }
}

import { CHUNKER_WASM } from './chunker-wasm.js';
import { invalidArgument } from './errors.js';

export interface ChunkerParams {
  minSize: number;
  avgSize: number;
  maxSize: number;
}

const KiB = 1024;
const MiB = 1024 * KiB;

export const DEFAULT_CHUNKER_PARAMS: ChunkerParams = Object.freeze({
  minSize: 256 * KiB,
  avgSize: 1 * MiB,
  maxSize: 4 * MiB,
});

/** Sanity bounds: smaller chunks would cost more in index entries than they save; a larger one
 *  must still fit in one message and one worker transfer. */
const MIN_MIN_SIZE = 64;
const MAX_MAX_SIZE = 64 * MiB;

/**
 * Throws INVALID_ARGUMENT naming the first bad value. Chunker parameters come from a repository
 * config and choose every chunk boundary, so anything odd is refused rather than adjusted.
 */
export function validateChunkerParams(p: ChunkerParams): void {
  for (const key of ['minSize', 'avgSize', 'maxSize'] as const) {
    const v = p[key];
    if (!Number.isSafeInteger(v) || v <= 0) {
      throw invalidArgument(`chunker ${key} must be a positive integer, got ${String(v)}`);
    }
  }
  const { minSize, avgSize, maxSize } = p;
  if (!Number.isInteger(Math.log2(avgSize))) {
    throw invalidArgument(`chunker avgSize must be a power of two, got ${avgSize}`);
  }
  if (minSize < MIN_MIN_SIZE) {
    throw invalidArgument(`chunker minSize must be at least ${MIN_MIN_SIZE}, got ${minSize}`);
  }
  if (minSize >= avgSize) {
    throw invalidArgument(`chunker minSize (${minSize}) must be less than avgSize (${avgSize})`);
  }
  if (avgSize >= maxSize) {
    throw invalidArgument(`chunker avgSize (${avgSize}) must be less than maxSize (${maxSize})`);
  }
  if (maxSize > MAX_MAX_SIZE) {
    throw invalidArgument(`chunker maxSize must be at most ${MAX_MAX_SIZE}, got ${maxSize}`);
  }
}

/**
 * Gear table: part of the on-disk format, since it decides every chunk boundary. Never edit it.
 * Generated once with SplitMix64 as in Vigna's splitmix64.c (state += 0x9e3779b97f4a7c15, then
 * the mix13 finalizer), state seeded with 0x436169726e434443 (ASCII "CairnCDC"): GEAR[i] is the
 * high 32 bits of the i-th output (i = 0..255). test/chunker.test.ts regenerates it that way and compares.
 */
export const GEAR: readonly number[] = Object.freeze([
  0xe901e125, 0xdedd9e0c, 0x5c05ee3a, 0x63cd7b23, 0xb656021b, 0xf06ca7e7, 0x6e7f94ed, 0x24d335ac,
  0x4ca3f90a, 0x0d35d89c, 0x51ce68d2, 0xa2f26ae9, 0x1601d81f, 0x6b4559ff, 0x618c8ec7, 0x0e520484,
  0x31e5e505, 0x9a12bea4, 0x2417b27e, 0x7cfa4b64, 0xb0a30460, 0x2d2cfc07, 0x1fedbf28, 0x92fe1f9d,
  0x2851b2a5, 0x584e5309, 0x620be26e, 0xca1f7ae3, 0xa886a2da, 0xc9f9c8be, 0x57fcb90b, 0x324107d6,
  0xcd7aab1a, 0xd710ba71, 0x08226189, 0x730e7db6, 0xc8643f7c, 0xf7bcc41f, 0xb8352b98, 0xac4622a5,
  0xc75bd54c, 0x1a311b8b, 0xd7f5c935, 0x8cfce30a, 0x8c4df8a1, 0xdd878485, 0x4b7da577, 0x4654d9f7,
  0x3dce4c66, 0x5d18a6b2, 0x68ff6dc1, 0xb89a19a8, 0x2e205f45, 0xd44fb4ac, 0xd5413532, 0x1de4da0c,
  0xb9ed013c, 0x863630d4, 0x17d793f8, 0x84f012bc, 0xb895f409, 0xc24f9e75, 0x785a8377, 0x9c8cb1af,
  0x01faba84, 0x87506c00, 0x48bf8cb4, 0x7c19d388, 0x5a8cc225, 0x3c45ed7b, 0x1df54b6a, 0x43c12a3b,
  0x0e2992f1, 0xe26f25af, 0xc87df4ed, 0xda83547d, 0x955c4b44, 0xa9fa2de0, 0x3917dd91, 0xe25e2a22,
  0x19a169ce, 0x81cdb4da, 0xbc372a26, 0xa7ded0b5, 0x23ed447a, 0xf3af1547, 0x3f7fb3b9, 0x26541722,
  0xd85fa82b, 0x036e9a38, 0x6f7982f4, 0x2e749d67, 0xa850e419, 0x443f4b61, 0x88cf3d9c, 0x317cd666,
  0x02fb0cac, 0xbed8218b, 0x463b05ee, 0x583d7de0, 0x51ec8811, 0x1efd03a1, 0x256a6056, 0x3f1b4fb7,
  0x197ff662, 0xa4ffadb6, 0xde0b4d96, 0x8d44fd2f, 0xab98dd39, 0x5f3ea6be, 0x7facf464, 0x9c544e8e,
  0x3a9866e3, 0x64855fe8, 0x87a58751, 0xdd2c1c3a, 0x8d841ba5, 0xc725ae14, 0x575c6aa4, 0x867b7a64,
  0xbfc0b9b0, 0xf7b801fa, 0xd46c385b, 0x378b947a, 0xf1ef3e71, 0xda3042be, 0xdeaf7996, 0x835827af,
  0xbf5676bc, 0x4931b109, 0x3c6b5c68, 0xac105d86, 0x736ab29a, 0xece70e72, 0x6d28dcca, 0xaf38aa0d,
  0xd79b24c0, 0x2275690c, 0x375ce6e7, 0xc36a2da2, 0x8c712582, 0xf2464476, 0x8275f9c8, 0x35df4561,
  0x4c0ee7c7, 0xc5a7c4a4, 0xb5b41c8b, 0x33e46e65, 0xff77fb22, 0x6bd91355, 0xd8818a69, 0x47f2e271,
  0xe4f042ca, 0x0021d676, 0xf2d0a580, 0x229a5d88, 0x2457957c, 0x2e8a44dd, 0xc1ac36be, 0xc46fc49b,
  0x74b59d83, 0x0696bdcf, 0x1d622346, 0x1d988b44, 0x15d96ad1, 0xc9519b88, 0xec6f2aef, 0xde089e99,
  0x28f12bd4, 0x79a545ac, 0x73cff1cd, 0xd55ea058, 0x6c507195, 0xe2a8846d, 0x455088c5, 0xae592710,
  0x6e34b7a9, 0xebb8a966, 0x6b4f34df, 0xb9b16768, 0x58d352f2, 0xc15194bf, 0x63b2c7db, 0x97887d71,
  0x90d1a7db, 0xde01d028, 0xd0697cee, 0xa13e2ed4, 0xbf7cefb6, 0x73529235, 0xbfba1520, 0x27e85924,
  0x916a1f1b, 0x532d2f32, 0x4eb138b6, 0xb3bc0794, 0x823b3547, 0x6d673a5e, 0xa8aef4e2, 0x3306b545,
  0x4b441e54, 0xbdf74b28, 0xcfd44161, 0x52ab1439, 0x9679c118, 0x26ac0103, 0x892534d1, 0xaf917e06,
  0x0eba50e7, 0x142682b5, 0xfc1a4a1b, 0x34e3a04e, 0x994fbb09, 0x4255848f, 0x71f8f65b, 0xd9aae305,
  0x22756678, 0x0024d6c5, 0x376d06b9, 0x6e3c4d78, 0x88d35e91, 0x64457553, 0x99497fbd, 0xab86e34c,
  0x0c9ec0f3, 0x1bfbb241, 0xb4bd604e, 0x1fd0b35a, 0xa62bb58b, 0xbc34697a, 0x491c4940, 0x735d2488,
  0x1c404d8c, 0x2a7adcb9, 0x2addbe22, 0xfc651ef8, 0x3c3f1bc7, 0x5b0ae605, 0xe893bc64, 0xc28ceb60,
  0xa4a4cf6d, 0xc6391a0e, 0x45626c70, 0x34a99c79, 0xff67abfc, 0x1312ac86, 0x52e5ad81, 0x7acc714a,
  0x9defe870, 0xf3556c70, 0xd903ba08, 0x08cdc0e7, 0xe12f8632, 0x92262b66, 0x13a63eb6, 0x98f72ceb,
]);

/**
 * A mask of `ones` bits spread evenly from bit 31 downwards: it always holds bit 31, which in a
 * 32-bit gear hash depends on the last 32 bytes, so each boundary depends on a full 32-byte
 * window rather than on the last few bytes as a low-bits mask would. Part of the format too.
 */
function spreadMask(ones: number): number {
  let mask = 0;
  for (let k = 0; k < ones; k++) mask |= 1 << (31 - Math.floor((k * 32) / ones));
  return mask;
}

/** The gear table as the loop in common/chunker.wat reads it: 256 little-endian i32 at address 0. */
const GEAR_BYTES = 256 * 4;
const WASM_PAGE = 64 * 1024;
const MAX_MEMORY = 2 ** 31 - WASM_PAGE;
/** Compiled once per thread on first use; each Chunker instantiates it over memory of its own. */
let compiled: WebAssembly.Module | undefined;

interface WasmCut {
  memory: WebAssembly.Memory;
  cut: (from: number, normal: number, limit: number, maskS: number, maskL: number) => number;
  /** Where the bytes of a buffer outside the memory are copied to be cut. */
  scratch: number;
}

/**
 * FastCDC (Xia et al., USENIX ATC 2016; IEEE TPDS 2020) with normalized chunking level 2:
 * no boundary before minSize (those bytes are not even hashed), a mask two bits harder than
 * log2(avgSize) up to avgSize and two bits easier after it, a forced cut at maxSize. The hash
 * restarts at each chunk start, so a chunk depends only on its own bytes and cut() needs no
 * state between chunks. The byte that completes the boundary window ends the chunk.
 *
 * The per-byte loop is WebAssembly (common/chunker.wat), which reads from its own memory: the
 * bytes of buffers from readBuffers() are cut where they lie, those of any other buffer are
 * copied into that memory first (about a tenth of the loop's cost).
 */
export class Chunker {
  readonly minSize: number;
  readonly avgSize: number;
  readonly maxSize: number;
  private readonly maskS: number;
  private readonly maskL: number;
  private wasm: WasmCut | undefined;

  constructor(params: ChunkerParams) {
    validateChunkerParams(params);
    this.minSize = params.minSize;
    this.avgSize = params.avgSize;
    this.maxSize = params.maxSize;
    const bits = Math.log2(params.avgSize);
    this.maskS = spreadMask(bits + 2);
    this.maskL = spreadMask(bits - 2);
  }

  /**
   * `count` buffers of `size` bytes that cut() reads in place, with no copy: a caller that reads
   * files into buffers of its own should read into these. Each call makes a new memory; the
   * buffers of an earlier call still work, as any other buffer does.
   */
  readBuffers(count: number, size: number): Buffer[] {
    const wasm = this.instantiate(count * size);
    const first = wasm.scratch + this.maxSize;
    return Array.from({ length: count }, (_, i) => Buffer.from(wasm.memory.buffer, first + i * size, size));
  }

  /** A memory holding the gear table, the scratch area and `hosted` more bytes, never grown
   *  afterwards: growing would detach every buffer handed out over it. */
  private instantiate(hosted: number): WasmCut {
    const scratch = GEAR_BYTES;
    const bytes = scratch + this.maxSize + hosted;
    // The loop returns addresses as signed 32-bit numbers: past 2 GiB they would read as "no boundary".
    if (bytes > MAX_MEMORY) throw new RangeError(`chunker read buffers of ${hosted} bytes pass the ${MAX_MEMORY}-byte limit of its memory`);
    compiled ??= new WebAssembly.Module(CHUNKER_WASM);
    const memory = new WebAssembly.Memory({ initial: Math.ceil(bytes / WASM_PAGE) });
    const gear = new DataView(memory.buffer, 0, GEAR_BYTES);
    GEAR.forEach((g, i) => gear.setUint32(i * 4, g, true));
    const { exports } = new WebAssembly.Instance(compiled, { env: { memory } });
    this.wasm = { memory, cut: exports.cut as WasmCut['cut'], scratch };
    return this.wasm;
  }

  /** Length of the next chunk that starts at buf[start], looking only at buf[start..end).
   *  Returns a cut length in [minSize+1, maxSize] when a boundary is found or when
   *  end-start >= maxSize; returns -1 when no boundary lies in the available bytes and fewer
   *  than maxSize bytes are available (the caller must supply more data, or at EOF take the
   *  remainder as the last chunk). The answer never changes as more bytes become available. */
  cut(buf: Uint8Array, start: number, end: number): number {
    if (!(0 <= start && start <= end && end <= buf.length)) {
      throw new RangeError(`cut range [${start}, ${end}) outside a buffer of ${buf.length} bytes`);
    }
    const avail = end - start;
    if (avail <= this.minSize) return -1;
    const haveMax = avail >= this.maxSize;
    const limit = haveMax ? start + this.maxSize : end;
    const normal = Math.min(start + this.avgSize, limit);
    const from = start + this.minSize;
    const wasm = this.wasm ?? this.instantiate(0);
    // The address of buf[0] in the WebAssembly memory, real or as if the copy were buf.
    let base: number;
    if (buf.buffer === wasm.memory.buffer) {
      base = buf.byteOffset;
    } else {
      new Uint8Array(wasm.memory.buffer, wasm.scratch, limit - from).set(buf.subarray(from, limit));
      base = wasm.scratch - from;
    }
    const past = wasm.cut(base + from, base + normal, base + limit, this.maskS, this.maskL);
    if (past >= 0) return past - base - start;
    return haveMax ? this.maxSize : -1;
  }
}

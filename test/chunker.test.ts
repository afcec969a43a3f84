import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { blake3 } from '@napi-rs/blake-hash';
import wabtInit from 'wabt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chunkViews, readBufferSize, splitBuffer } from '../common/chunk-reader.js';
import {
  Chunker,
  DEFAULT_CHUNKER_PARAMS,
  GEAR,
  validateChunkerParams,
  type ChunkerParams,
} from '../common/chunker.js';
import { CHUNKER_WASM } from '../common/chunker-wasm.js';
import { CairnError, Code } from '../common/errors.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SMALL: ChunkerParams = { minSize: 2 * KiB, avgSize: 8 * KiB, maxSize: 32 * KiB };

/** Deterministic bytes on every platform: a Weyl sequence through the murmur3 finalizer,
 *  written little-endian byte by byte. */
function pseudoRandom(len: number, seed: number): Uint8Array {
  const out = new Uint8Array(len);
  let s = seed | 0;
  for (let i = 0; i < len; i += 4) {
    s = (s + 0x9e3779b9) | 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    z ^= z >>> 16;
    out[i] = z;
    out[i + 1] = z >>> 8;
    out[i + 2] = z >>> 16;
    out[i + 3] = z >>> 24;
  }
  return out;
}

function chunkHashes(data: Uint8Array, lengths: number[]): string[] {
  const hashes: string[] = [];
  let pos = 0;
  for (const len of lengths) {
    hashes.push(blake3(data.subarray(pos, pos + len)).toString('hex'));
    pos += len;
  }
  return hashes;
}

function lengthsDigest(lengths: number[]): string {
  const bytes = Buffer.alloc(4 * lengths.length);
  lengths.forEach((len, i) => bytes.writeUInt32LE(len, 4 * i));
  return blake3(bytes).toString('hex');
}

function expectBounds(lengths: number[], total: number, p: ChunkerParams): void {
  expect(lengths.reduce((a, b) => a + b, 0)).toBe(total);
  const last = lengths.length - 1;
  const outOfBounds = lengths.filter(
    (len, i) => len < 1 || len > p.maxSize || (i < last && len < p.minSize),
  );
  expect(outOfBounds).toEqual([]);
}

describe('validateChunkerParams', () => {
  it('accepts the defaults and other sane parameters', () => {
    expect(DEFAULT_CHUNKER_PARAMS).toEqual({ minSize: 256 * KiB, avgSize: 1 * MiB, maxSize: 4 * MiB });
    validateChunkerParams(DEFAULT_CHUNKER_PARAMS);
    validateChunkerParams(SMALL);
    validateChunkerParams({ minSize: 64, avgSize: 128, maxSize: 129 });
    validateChunkerParams({ minSize: 32 * MiB - 1, avgSize: 32 * MiB, maxSize: 64 * MiB });
  });

  it.each([
    [{ minSize: 2048, avgSize: 6000, maxSize: 32768 }, /avgSize must be a power of two, got 6000/],
    [{ minSize: 32, avgSize: 8192, maxSize: 32768 }, /minSize must be at least 64, got 32/],
    [{ minSize: 8192, avgSize: 8192, maxSize: 32768 }, /minSize \(8192\) must be less than avgSize/],
    [{ minSize: 2048, avgSize: 8192, maxSize: 8192 }, /avgSize \(8192\) must be less than maxSize/],
    [{ minSize: 2048, avgSize: 8192, maxSize: 65 * MiB }, /maxSize must be at most 67108864, got 68157440/],
    [{ minSize: 2048.5, avgSize: 8192, maxSize: 32768 }, /minSize must be a positive integer, got 2048.5/],
    [{ minSize: 2048, avgSize: NaN, maxSize: 32768 }, /avgSize must be a positive integer, got NaN/],
    [{ minSize: 2048, avgSize: 8192, maxSize: -1 }, /maxSize must be a positive integer, got -1/],
  ])('rejects %o', (params, message) => {
    let err: unknown;
    try {
      new Chunker(params);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CairnError);
    expect((err as CairnError).code).toBe(Code.INVALID_ARGUMENT);
    expect((err as CairnError).message).toMatch(message);
  });
});

describe('GEAR table', () => {
  it('is SplitMix64 seeded with "CairnCDC", high 32 bits of each output', () => {
    const M = (1n << 64n) - 1n;
    let s = 0x436169726e434443n;
    const expected: number[] = [];
    for (let i = 0; i < 256; i++) {
      s = (s + 0x9e3779b97f4a7c15n) & M;
      let z = s;
      z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M;
      z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M;
      z ^= z >> 31n;
      expected.push(Number(z >> 32n));
    }
    expect(GEAR).toEqual(expected);
  });
});

describe('Chunker golden vectors', () => {
  it('default parameters on 20 MiB', () => {
    const data = pseudoRandom(20 * MiB, 1);
    const lengths = splitBuffer(data, new Chunker(DEFAULT_CHUNKER_PARAMS));
    expect(lengths).toEqual(GOLDEN_DEFAULT_20MIB);
  });

  it('small parameters on 1 MiB', () => {
    const data = pseudoRandom(1 * MiB, 2);
    expect(splitBuffer(data, new Chunker(SMALL))).toEqual(GOLDEN_SMALL_1MIB);
  });

  it('small parameters on 64 MiB (digest of the lengths)', () => {
    const data = pseudoRandom(64 * MiB, 3);
    const lengths = splitBuffer(data, new Chunker(SMALL));
    expect(lengths.length).toBe(GOLDEN_SMALL_64MIB_COUNT);
    expect(lengthsDigest(lengths)).toBe(GOLDEN_SMALL_64MIB_DIGEST);
  });
});

/** FastCDC as the paper writes it, one byte per step, with the masks documented in chunker.ts:
 *  log2(avg) ± 2 bits spread evenly from bit 31 down. The Chunker must cut exactly alike. */
function referenceSplit(data: Uint8Array, p: ChunkerParams): number[] {
  const mask = (ones: number) => {
    let m = 0;
    for (let k = 0; k < ones; k++) m |= 1 << (31 - Math.floor((k * 32) / ones));
    return m;
  };
  const bits = Math.log2(p.avgSize);
  const maskS = mask(bits + 2);
  const maskL = mask(bits - 2);
  const lengths: number[] = [];
  for (let start = 0; start < data.length; ) {
    const n = Math.min(data.length - start, p.maxSize);
    let len = n;
    let h = 0;
    for (let i = p.minSize; i < n; i++) {
      h = ((h << 1) + GEAR[data[start + i]!]!) | 0;
      if ((h & (i < p.avgSize ? maskS : maskL)) === 0) {
        len = i + 1;
        break;
      }
    }
    lengths.push(len);
    start += len;
  }
  return lengths;
}

describe('Chunker against a one-byte-per-step reference', () => {
  it.each([
    { minSize: 64, avgSize: 128, maxSize: 256 },
    { minSize: 65, avgSize: 128, maxSize: 301 },
    { minSize: 1001, avgSize: 4096, maxSize: 9999 },
    SMALL,
    { minSize: 100 * KiB, avgSize: 256 * KiB, maxSize: 1 * MiB },
  ])('cuts the same chunks with %o', (p) => {
    const data = pseudoRandom(4 * MiB + 3, 12);
    const lengths = splitBuffer(data, new Chunker(p));
    expect(lengths).toEqual(referenceSplit(data, p));
    expectBounds(lengths, data.length, p);
  });
});

describe('Chunker WebAssembly', () => {
  it('is common/chunker.wat compiled (run npm run gen:wasm after editing it)', async () => {
    const wabt = await wabtInit();
    const source = await readFile(new URL('../common/chunker.wat', import.meta.url), 'utf8');
    const { buffer } = wabt.parseWat('chunker.wat', source).toBinary({});
    expect(Buffer.from(buffer).equals(CHUNKER_WASM)).toBe(true);
  });

  it('cuts the bytes of its read buffers in place exactly as the reference does', () => {
    const chunker = new Chunker(SMALL);
    const [first, second] = chunker.readBuffers(2, 3 * MiB);
    const data = pseudoRandom(3 * MiB, 21);
    first!.set(data);
    second!.set(data);
    const expected = referenceSplit(data, SMALL);
    expect(splitBuffer(first!, chunker)).toEqual(expected);
    // At an offset inside the memory, and through a view that does not start at the buffer's start.
    expect(splitBuffer(second!, chunker)).toEqual(expected);
    const tail = second!.subarray(12345);
    expect(splitBuffer(tail, chunker)).toEqual(referenceSplit(data.subarray(12345), SMALL));
  });

  it('gives the golden chunks from a read buffer too', () => {
    const chunker = new Chunker(DEFAULT_CHUNKER_PARAMS);
    const [buf] = chunker.readBuffers(1, 20 * MiB);
    buf!.set(pseudoRandom(20 * MiB, 1));
    expect(splitBuffer(buf!, chunker)).toEqual(GOLDEN_DEFAULT_20MIB);
  });

  it('still cuts the buffers of an earlier readBuffers() call, and buffers of its own', () => {
    const chunker = new Chunker(SMALL);
    const [old] = chunker.readBuffers(1, 1 * MiB);
    const data = pseudoRandom(1 * MiB, 2);
    old!.set(data);
    chunker.readBuffers(1, 1 * MiB);
    expect(splitBuffer(old!, chunker)).toEqual(GOLDEN_SMALL_1MIB);
    expect(splitBuffer(data, chunker)).toEqual(GOLDEN_SMALL_1MIB);
  });
});

describe('Chunker bounds', () => {
  it('keeps every chunk within [min, max] and the mean near avg (small params, 64 MiB)', () => {
    const data = pseudoRandom(64 * MiB, 3);
    const lengths = splitBuffer(data, new Chunker(SMALL));
    expectBounds(lengths, data.length, SMALL);
    const mean = data.length / lengths.length;
    expect(mean).toBeGreaterThan(SMALL.avgSize * 0.65);
    expect(mean).toBeLessThan(SMALL.avgSize * 1.35);
  });

  it('keeps every chunk within [min, max] with the default params', () => {
    const data = pseudoRandom(20 * MiB, 1);
    const lengths = splitBuffer(data, new Chunker(DEFAULT_CHUNKER_PARAMS));
    expectBounds(lengths, data.length, DEFAULT_CHUNKER_PARAMS);
  });

  it.each([SMALL, DEFAULT_CHUNKER_PARAMS])('cuts all-zero data at exactly maxSize (%o)', (p) => {
    const data = new Uint8Array(3 * p.maxSize + 123);
    expect(splitBuffer(data, new Chunker(p))).toEqual([p.maxSize, p.maxSize, p.maxSize, 123]);
  });

  it('takes a short input as one chunk, and nothing from an empty one', () => {
    const chunker = new Chunker(SMALL);
    expect(splitBuffer(new Uint8Array(0), chunker)).toEqual([]);
    expect(splitBuffer(new Uint8Array(1), chunker)).toEqual([1]);
    expect(splitBuffer(pseudoRandom(SMALL.minSize, 4), chunker)).toEqual([SMALL.minSize]);
  });
});

describe('Chunker.cut', () => {
  const chunker = new Chunker(SMALL);
  const data = pseudoRandom(1 * MiB, 2);
  const lengths = splitBuffer(data, chunker);

  it('finds each boundary from the chunk bytes alone, and asks for more before it', () => {
    let start = 0;
    for (const len of lengths.slice(0, -1)) {
      expect(chunker.cut(data, start, start + len)).toBe(len);
      expect(chunker.cut(data, start, start + len - 1)).toBe(-1);
      start += len;
    }
  });

  it('returns -1 while no more than minSize bytes are available', () => {
    expect(chunker.cut(data, 0, 0)).toBe(-1);
    expect(chunker.cut(data, 100, 100 + SMALL.minSize)).toBe(-1);
  });

  it('returns maxSize when maxSize bytes hold no boundary', () => {
    const zeros = new Uint8Array(SMALL.maxSize + 10);
    expect(chunker.cut(zeros, 0, SMALL.maxSize - 1)).toBe(-1);
    expect(chunker.cut(zeros, 0, SMALL.maxSize)).toBe(SMALL.maxSize);
    expect(chunker.cut(zeros, 5, SMALL.maxSize + 10)).toBe(SMALL.maxSize);
  });

  it('refuses a range outside the buffer', () => {
    expect(() => chunker.cut(data, 0, data.length + 1)).toThrow(RangeError);
    expect(() => chunker.cut(data, -1, 10)).toThrow(RangeError);
    expect(() => chunker.cut(data, 10, 5)).toThrow(RangeError);
  });
});

describe('Chunker shift resistance', () => {
  it.each([
    ['small params, 4 MiB', SMALL, 4 * MiB],
    ['default params, 20 MiB', DEFAULT_CHUNKER_PARAMS, 20 * MiB],
  ])('a byte inserted at the start changes at most the first 2 chunks (%s)', (_name, p, size) => {
    const chunker = new Chunker(p);
    const data = pseudoRandom(size, 5);
    const shifted = new Uint8Array(size + 1);
    shifted[0] = 0x5a;
    shifted.set(data, 1);
    const before = chunkHashes(data, splitBuffer(data, chunker));
    const after = chunkHashes(shifted, splitBuffer(shifted, chunker));
    expect(before.length).toBeGreaterThan(10);
    const beforeSet = new Set(before);
    const afterSet = new Set(after);
    expect(after.filter((h) => !beforeSet.has(h)).length).toBeLessThanOrEqual(2);
    expect(before.filter((h) => !afterSet.has(h)).length).toBeLessThanOrEqual(2);
  });

  it('a byte changed in the middle changes at most 2 chunks', () => {
    const chunker = new Chunker(SMALL);
    const data = pseudoRandom(4 * MiB, 6);
    const edited = data.slice();
    edited[2 * MiB] ^= 0xff;
    const before = new Set(chunkHashes(data, splitBuffer(data, chunker)));
    const after = chunkHashes(edited, splitBuffer(edited, chunker));
    expect(after.filter((h) => !before.has(h)).length).toBeLessThanOrEqual(2);
  });
});

describe('chunkViews', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cairn-chunker-test-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  let fileNo = 0;
  async function readFile(
    data: Uint8Array,
    chunker: Chunker,
    readSize?: number,
  ): Promise<Buffer[]> {
    const path = join(dir, `f${fileNo++}`);
    await writeFile(path, data);
    const fh = await open(path, 'r');
    try {
      const chunks: Buffer[] = [];
      // A view is valid until the generator resumes: keep copies.
      for await (const chunk of chunkViews(fh, chunker, readSize)) chunks.push(Buffer.from(chunk));
      return chunks;
    } finally {
      await fh.close();
    }
  }

  async function expectSameAsSplit(
    data: Uint8Array,
    p: ChunkerParams,
    readSize?: number,
  ): Promise<void> {
    const chunker = new Chunker(p);
    const chunks = await readFile(data, chunker, readSize);
    expect(chunks.map((c) => c.length)).toEqual(splitBuffer(data, chunker));
    expect(Buffer.concat(chunks).equals(data)).toBe(true);
  }

  const edgeSizes = (p: ChunkerParams) => [
    ...[0, 1, p.minSize - 1, p.minSize, p.minSize + 1],
    ...[p.maxSize - 1, p.maxSize, p.maxSize + 1],
  ];

  it.each([undefined, 1000])('matches splitBuffer at edge sizes, small params (readSize %s)', async (
    readSize,
  ) => {
    for (const size of edgeSizes(SMALL)) {
      await expectSameAsSplit(pseudoRandom(size, 7), SMALL, readSize);
      await expectSameAsSplit(new Uint8Array(size), SMALL, readSize);
    }
  });

  it('matches splitBuffer at edge sizes, default params', async () => {
    for (const size of edgeSizes(DEFAULT_CHUNKER_PARAMS)) {
      await expectSameAsSplit(pseudoRandom(size, 8), DEFAULT_CHUNKER_PARAMS, 300 * KiB);
    }
  });

  it('yields nothing for an empty file and one chunk for a short one', async () => {
    const chunker = new Chunker(SMALL);
    expect(await readFile(new Uint8Array(0), chunker)).toEqual([]);
    const one = await readFile(Uint8Array.of(42), chunker);
    expect(one.map((c) => [...c])).toEqual([[42]]);
  });

  it('matches splitBuffer across many refills of a small read size', async () => {
    await expectSameAsSplit(pseudoRandom(3 * MiB, 9), SMALL, 1000);
    await expectSameAsSplit(pseudoRandom(3 * MiB, 9), SMALL, SMALL.maxSize);
  });

  it('matches splitBuffer on a file larger than its read buffer', async () => {
    await expectSameAsSplit(pseudoRandom(20 * MiB, 10), SMALL);
    await expectSameAsSplit(pseudoRandom(20 * MiB, 10), DEFAULT_CHUNKER_PARAMS);
  });

  it('yields views of the read buffer it is given: no buffer per chunk', async () => {
    const chunker = new Chunker(SMALL);
    const data = pseudoRandom(256 * KiB, 11);
    const readBuffer = Buffer.allocUnsafeSlow(readBufferSize(chunker));
    const path = join(dir, `f${fileNo++}`);
    await writeFile(path, data);
    const fh = await open(path, 'r');
    const copies: Buffer[] = [];
    try {
      for await (const view of chunkViews(fh, chunker, undefined, readBuffer)) {
        expect(view.buffer).toBe(readBuffer.buffer);
        copies.push(Buffer.from(view));
      }
    } finally {
      await fh.close();
    }
    expect(copies.length).toBeGreaterThan(5);
    expect(Buffer.concat(copies).equals(data)).toBe(true);
  });

  it('refuses a read size that is not a positive integer', async () => {
    await expect(readFile(new Uint8Array(10), new Chunker(SMALL), 0)).rejects.toThrow(RangeError);
  });
});

// Computed once by this implementation and frozen: a change here changes every chunk id.
const GOLDEN_DEFAULT_20MIB: number[] = [
  1497997, 1288460, 1432078, 1497614, 1632674, 1073408, 1084165, 607231, 2129977, 1222562,
  1224251, 1315707, 1420584, 1104289, 1174215, 1266308,
];
const GOLDEN_SMALL_1MIB: number[] = [
  10015, 12604, 3245, 5663, 9192, 8535, 8193, 8552, 8867, 12236,
  2206, 9385, 5045, 9228, 12331, 8711, 9978, 9750, 13426, 8460,
  8633, 11590, 8583, 11195, 8292, 10283, 12749, 10928, 10777, 8634,
  12599, 9156, 18290, 9611, 9797, 8371, 8984, 8508, 8254, 10212,
  9596, 8461, 9517, 8366, 14516, 8484, 9600, 9428, 11440, 3164,
  9321, 8755, 3569, 7301, 10153, 5988, 9821, 9086, 9491, 5769,
  10157, 8587, 8677, 7888, 8722, 7532, 11575, 2134, 8608, 2714,
  4783, 8706, 9186, 10161, 3423, 8963, 9315, 13261, 16133, 10402,
  23095, 2366, 10105, 9867, 8434, 8241, 8802, 13335, 9106, 12876,
  11837, 8480, 9214, 10659, 8452, 9720, 11454, 13563, 8682, 9651,
  9359, 10282, 8957, 10567, 17231, 8991, 8916, 11987, 10400, 10433,
  4740, 4953,
];
const GOLDEN_SMALL_64MIB_COUNT = 7199;
const GOLDEN_SMALL_64MIB_DIGEST = '1a1ca0e7efd821893ceeb8cd25f5c0c59fb8432547b189300a696299cf2062b2';

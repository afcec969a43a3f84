import { randomBytes } from 'node:crypto';
import binding from 'zstd-napi/binding.js';
import { describe, expect, it } from 'vitest';
import { BlobCompressor, BlobDecompressor, DEFAULT_LEVEL, SAMPLE_FROM } from '../common/compression.js';

/** Gaussian float32 noise: level 1 saves ~7.5% on it (the exponent bytes), level 3 no more. */
function floatNoise(bytes: number, seed: number): Buffer {
  const f = new Float32Array(bytes / 4);
  let s = seed >>> 0;
  const next = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
  for (let i = 0; i < f.length; i++) f[i] = Math.sqrt(-2 * Math.log(next() + 1e-12)) * Math.cos(2 * Math.PI * next());
  return Buffer.from(f.buffer);
}

function jsonLines(bytes: number): Buffer {
  const lines: string[] = [];
  for (let i = 0, n = 0; n < bytes; i++) {
    const line = `{"step": ${i}, "loss": ${(1 / (i + 1)).toFixed(6)}, "lr": ${(0.001 * 0.999 ** i).toExponential(4)}}\n`;
    lines.push(line);
    n += line.length;
  }
  return Buffer.from(lines.join('')).subarray(0, bytes);
}

/** What zstd itself makes of `raw` at `level`: the reference the compressor's choice is checked against. */
function zstdAt(raw: Buffer, level: number): Buffer {
  const out = Buffer.alloc(binding.compressBound(raw.length));
  const n = new binding.CCtx().compress(out, raw, level);
  return out.subarray(0, n);
}

/**
 * Checks that `raw` was packed at `level`: levels 1 and the default must frame it differently,
 * or the check could not tell them apart, and the frame must inflate back to `raw`.
 */
function expectPackedAt(raw: Buffer, level: number, compressor = new BlobCompressor()): void {
  expect(zstdAt(raw, 1).equals(zstdAt(raw, DEFAULT_LEVEL))).toBe(false);
  const packed = compressor.pack(raw);
  expect(packed).toBeDefined();
  expect(Buffer.from(packed!).equals(zstdAt(raw, level))).toBe(true);
  expect(new BlobDecompressor().decompress(packed!, raw.length, 'test blob').equals(raw)).toBe(true);
}

describe('BlobCompressor level choice', () => {
  it('compresses a large blob whose sample saves little at level 1', () => {
    expectPackedAt(floatNoise(1024 * 1024, 7), 1);
  });

  it('keeps the repository level for a large blob that compresses well', () => {
    expectPackedAt(jsonLines(1024 * 1024), DEFAULT_LEVEL);
  });

  it('does not sample a blob below SAMPLE_FROM: it gets the repository level', () => {
    // Noise first, so that a sample taken anyway would have chosen level 1.
    expectPackedAt(Buffer.concat([floatNoise(64 * 1024, 11), jsonLines(SAMPLE_FROM - 64 * 1024 - 4096)]), DEFAULT_LEVEL);
  });

  it('judges each blob on its own sample, whatever came before', () => {
    const compressor = new BlobCompressor();
    const text = jsonLines(512 * 1024);
    const noise = floatNoise(512 * 1024, 3);
    expectPackedAt(noise, 1, compressor);
    expectPackedAt(text, DEFAULT_LEVEL, compressor);
    expectPackedAt(noise, 1, compressor);
  });

  it('still stores incompressible blobs raw', () => {
    expect(new BlobCompressor().pack(randomBytes(1024 * 1024))).toBeUndefined();
  });

  it('uses level 1 throughout when the repository asks for level 1', () => {
    const raw = jsonLines(1024 * 1024);
    expect(Buffer.from(new BlobCompressor(1).pack(raw)!).equals(zstdAt(raw, 1))).toBe(true);
  });
});

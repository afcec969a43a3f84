import { describe, expect, it } from 'vitest';
import { Arena, contiguousRuns, SlabPool } from '../client/slab-pool.js';

describe('SlabPool and Arena', () => {
  it('places allocations back to back and reuses a released slab', () => {
    const pool = new SlabPool(1024, 4);
    const a = new Arena(pool);
    const x = a.alloc(100);
    const y = a.alloc(200);
    expect(y.buffer).toBe(x.buffer);
    expect(y.byteOffset).toBe(x.byteOffset + 100);
    const z = a.alloc(900);
    expect(z.buffer).not.toBe(x.buffer);
    a.release();
    const b = new Arena(pool);
    expect([x.buffer, z.buffer]).toContain(b.alloc(10).buffer);
  });

  it('keeps at most maxFree slabs and never pools an oversized allocation', () => {
    const pool = new SlabPool(64, 1);
    const a = new Arena(pool);
    const first = a.alloc(64);
    const second = a.alloc(64);
    const huge = a.alloc(65);
    expect(huge.length).toBe(65);
    a.release();
    const next = new Arena(pool);
    const got = [next.alloc(64).buffer, next.alloc(64).buffer];
    expect(got.filter((b) => b === first.buffer || b === second.buffer)).toHaveLength(1);
    expect(got).not.toContain(huge.buffer);
  });

  it('allocates shared memory a worker thread can read without a copy', () => {
    expect(new Arena(new SlabPool(64, 1)).alloc(8).buffer).toBeInstanceOf(SharedArrayBuffer);
  });
});

describe('contiguousRuns', () => {
  it('merges views that follow each other in memory, and only those', () => {
    const slab = Buffer.from('abcdefghij');
    const other = Buffer.from('XY');
    const runs = [...contiguousRuns([slab.subarray(0, 3), slab.subarray(3, 5), other, slab.subarray(5, 10), slab.subarray(5, 10)])].map(String);
    expect(runs).toEqual(['abcde', 'XY', 'fghij', 'fghij']);
  });
});

/**
 * Restore inflates about a gigabyte a minute. A fresh buffer per chunk is external memory
 * the collector only returns in full mark-compacts (over a hundred of them per gigabyte), so
 * chunks are inflated into slabs that are handed back and reused once their bytes are on disk.
 * Slabs are shared memory so the file-writer thread can write straight from them.
 */
export class SlabPool {
  private readonly free: Buffer[] = [];

  /** `maxFree` bounds what the pool keeps between uses; what is in use is bounded by the callers. */
  constructor(
    readonly slabBytes: number,
    private readonly maxFree: number,
  ) {}

  take(): Buffer {
    return this.free.pop() ?? sharedBuffer(this.slabBytes);
  }

  give(slab: Buffer): void {
    if (this.free.length < this.maxFree) this.free.push(slab);
  }
}

/**
 * Room for one batch of chunks, carved from pool slabs in order: chunks that arrive one after
 * another sit next to each other, so a file's run of them can go to disk in one write.
 * Every view it handed out is invalid after release().
 */
export class Arena {
  private readonly slabs: Buffer[] = [];
  private used = 0;

  /** Without a pool every alloc is a fresh buffer and release() has nothing to give back. */
  constructor(private readonly pool: SlabPool | undefined) {}

  alloc(n: number): Buffer {
    if (!this.pool) return Buffer.allocUnsafe(n);
    // Larger than any slab (only a chunker with huge chunks, or a lying server): not pooled.
    if (n > this.pool.slabBytes) return sharedBuffer(n);
    let slab = this.slabs.at(-1);
    if (!slab || slab.length - this.used < n) {
      slab = this.pool.take();
      this.slabs.push(slab);
      this.used = 0;
    }
    const view = slab.subarray(this.used, this.used + n);
    this.used += n;
    return view;
  }

  release(): void {
    for (const slab of this.slabs.splice(0)) this.pool!.give(slab);
    this.used = 0;
  }
}

function sharedBuffer(n: number): Buffer {
  return Buffer.from(new SharedArrayBuffer(n));
}

/** Consecutive views that are consecutive in memory, merged: fewer, larger writes. */
export function* contiguousRuns(bufs: Buffer[]): Generator<Buffer> {
  let run: Buffer | undefined;
  for (const b of bufs) {
    if (run && b.buffer === run.buffer && b.byteOffset === run.byteOffset + run.length) {
      run = Buffer.from(run.buffer, run.byteOffset, run.length + b.length);
    } else {
      if (run) yield run;
      run = b;
    }
  }
  if (run) yield run;
}

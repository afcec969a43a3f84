/** The smallest buffer handed out: below it, one class for every tiny file is plenty. */
const MIN_CLASS = 1024;
/** Classes per doubling: a chunk wastes at most a quarter of its buffer. */
const STEPS = 4;

/**
 * Reusable buffers for chunks on their way to the server. A fresh ArrayBuffer per chunk is
 * external memory that outlives a scavenge, so a gigabyte of chunks used to cost about a
 * hundred full mark-compacts; reused ones cost none. Each buffer owns its whole ArrayBuffer,
 * so it can be transferred to a worker and back, and a returned buffer is recognised by its
 * ArrayBuffer's length alone.
 *
 * Only free buffers count against `maxRetained`: those handed out are bounded by the
 * caller's window. A buffer given back beyond the bound is dropped for the collector.
 */
export class BufferPool {
  private readonly free = new Map<number, ArrayBuffer[]>();
  private retained = 0;

  constructor(private readonly maxRetained: number) {}

  /**
   * A buffer of exactly `length` bytes whose ArrayBuffer is the pool's. Chunk sizes vary
   * continuously, so a free buffer up to twice the length serves: an exact class would
   * rarely have one free. The ArrayBuffers handed out are thus at most twice the bytes asked.
   */
  take(length: number): Buffer {
    const want = sizeClass(length);
    for (let size = want, n = 0; n <= STEPS; size = sizeClass(size + 1), n++) {
      const ab = this.free.get(size)?.pop();
      if (ab) {
        this.retained -= size;
        return Buffer.from(ab, 0, length);
      }
    }
    return Buffer.from(Buffer.allocUnsafeSlow(want).buffer, 0, length);
  }

  /** Takes back a buffer from take(), or a view over its ArrayBuffer after a trip to a worker. */
  give(buf: Uint8Array): void {
    const ab = buf.buffer as ArrayBuffer;
    const size = ab.byteLength;
    // Detached: it was transferred away and is not ours any more.
    if (size === 0 || size > this.maxRetained) return;
    if (this.retained + size > this.maxRetained) this.evict(size);
    if (this.retained + size > this.maxRetained) return;
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    list.push(ab);
    this.retained += size;
  }

  get retainedBytes(): number {
    return this.retained;
  }

  /** Frees room from other classes: the chunk sizes in use drift (small files, then large ones). */
  private evict(size: number): void {
    for (const [s, list] of this.free) {
      if (s === size) continue;
      while (list.length > 0 && this.retained + size > this.maxRetained) {
        list.pop();
        this.retained -= s;
      }
      if (this.retained + size <= this.maxRetained) return;
    }
  }
}

/** The smallest class size holding `length` bytes: 4 KiB, then 4 steps per power of two. */
export function sizeClass(length: number): number {
  if (length <= MIN_CLASS) return MIN_CLASS;
  const pow = 2 ** Math.floor(Math.log2(length - 1));
  const step = pow / STEPS;
  return Math.ceil(length / step) * step;
}

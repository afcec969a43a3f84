import { Worker } from 'node:worker_threads';
import { CairnError, Code } from '../common/errors.js';
import type { Packed } from '../common/compression.js';
import { chooseWorker, workerLimit } from './worker-choice.js';

interface Pending {
  resolve: (p: Packed) => void;
  reject: (e: Error) => void;
}

/**
 * zstd-napi runs on the calling thread, so compression lives in worker threads: the event
 * loop keeps reading, hashing and talking gRPC while the workers compress.
 * A chunk goes to a worker by transfer (no copy) and comes back, compressed or not, in the
 * same ArrayBuffer, so a caller that pools its buffers gets them back for reuse.
 */
export class CompressPool {
  private readonly workers: Worker[] = [];
  private readonly inflight = new Map<number, Pending>();
  private readonly load: number[] = [];
  private seq = 0;
  private failed: Error | undefined;

  /**
   * Workers start when the ones running are all busy, up to `size`: an unchanged snapshot
   * compresses nothing and should not pay for starting threads, a small change needs one.
   */
  constructor(
    private readonly level: number,
    private readonly size = workerLimit(4),
  ) {}

  private spawn(): number {
    const i = this.workers.length;
    const w = new Worker(new URL('./compress-worker.js', import.meta.url), { workerData: { level: this.level } });
    w.on('message', (m: { seq: number; data: Uint8Array; compressed: boolean }) => {
      if (--this.load[i] === 0) w.unref();
      const p = this.inflight.get(m.seq);
      this.inflight.delete(m.seq);
      p?.resolve({ data: Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength), compressed: m.compressed });
    });
    w.on('error', (err) => this.fail(err));
    w.unref();
    this.workers.push(w);
    this.load.push(0);
    return i;
  }

  private fail(err: Error): void {
    this.failed = new CairnError(Code.INTERNAL, `compression worker failed: ${err.message}`);
    for (const p of this.inflight.values()) p.reject(this.failed);
    this.inflight.clear();
  }

  /**
   * `raw` must start at offset 0 of an ArrayBuffer nothing else uses: the ArrayBuffer is
   * transferred (unusable here afterwards) and the result is a view of it from offset 0.
   */
  compress(raw: Buffer): Promise<Packed> {
    if (this.failed) return Promise.reject(this.failed);
    if (raw.byteOffset !== 0) return Promise.reject(new CairnError(Code.INTERNAL, 'compress() needs a buffer at offset 0 of its own ArrayBuffer'));
    const best = chooseWorker(this.load, this.size, () => this.spawn());
    const seq = this.seq++;
    this.load[best]++;
    return new Promise<Packed>((resolve, reject) => {
      this.inflight.set(seq, { resolve, reject });
      // Referenced while it works: a job in flight keeps the process alive, an idle pool does not.
      this.workers[best].ref();
      this.workers[best].postMessage({ seq, data: raw }, [raw.buffer as ArrayBuffer]);
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

import { Worker } from 'node:worker_threads';
import { CairnError, Code } from '../common/errors.js';

/** One file to create whole: written to `tmp`, then renamed to `abs`. */
export interface WholeFile {
  abs: string;
  tmp: string;
  mode: number;
  /** Seconds, as utimes takes them. */
  mtime: number;
  data: Uint8Array;
}

export interface WriteJob {
  seq: number;
  files: WholeFile[];
}

export interface WriteResult {
  seq: number;
  /** The first failure; it stopped the job at that file. */
  error?: { message: string; code?: string };
}

interface Pending {
  resolve: () => void;
  reject: (err: Error) => void;
}

/**
 * Small files go to disk on a worker thread, a batch per message: data in shared memory is
 * not copied on the way. Jobs run one after another in the order given.
 */
export class FileWriter {
  private worker: Worker | undefined;
  private readonly pending = new Map<number, Pending>();
  private seq = 0;
  private failed: Error | undefined;

  /**
   * Resolves once every file of `files` is in place. On the first failure it rejects with that
   * file's error; the files before it are in place, none after it was touched.
   */
  write(files: WholeFile[]): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    const seq = this.seq++;
    return new Promise<void>((resolve, reject) => {
      this.pending.set(seq, { resolve, reject });
      this.start().postMessage({ seq, files } satisfies WriteJob);
    });
  }

  private start(): Worker {
    if (this.worker) return this.worker;
    const w = new Worker(new URL('./file-writer-worker.js', import.meta.url));
    w.on('message', (r: WriteResult) => {
      const p = this.pending.get(r.seq);
      this.pending.delete(r.seq);
      if (!r.error) p?.resolve();
      else p?.reject(Object.assign(new Error(r.error.message), { code: r.error.code }));
    });
    w.on('error', (err) => this.fail(err));
    w.on('exit', (code) => this.fail(new Error(`it exited with code ${code}`)));
    this.worker = w;
    return w;
  }

  private fail(err: Error): void {
    this.worker = undefined;
    if (this.failed) return;
    this.failed = new CairnError(Code.INTERNAL, `file writer thread failed: ${err.message}`);
    for (const p of this.pending.values()) p.reject(this.failed);
    this.pending.clear();
  }

  async close(): Promise<void> {
    const w = this.worker;
    this.worker = undefined;
    this.failed ??= new CairnError(Code.INTERNAL, 'file writer is closed');
    await w?.terminate();
  }
}

import { CairnError, Code } from '../common/errors.js';
import type { ObjectWriter } from './object-store.js';

const FIRST_CAPACITY = 1024 * 1024;
/** Buffers kept for the next writers: two open packs (data, trees) and two sealed ones, as the pack writer holds. */
const KEPT = 4;

/**
 * ObjectWriters for a store that can only `put` whole objects: S3's PutObject needs the body
 * and its length up front, and a retry sends the same body again, so the bytes are held in
 * memory until commit. Buffers are reused from object to object and grow to the largest one
 * written: a fresh pack-sized buffer per pack cost more CPU in garbage collection than
 * verifying the blobs did.
 */
export class BufferedWriters {
  private readonly free: Buffer[] = [];

  constructor(private readonly put: (key: string, data: Buffer) => Promise<void>) {}

  open(): ObjectWriter {
    let buf: Buffer | undefined = this.free.pop() ?? Buffer.allocUnsafeSlow(FIRST_CAPACITY);
    let used = 0;
    const held = (): Buffer => {
      if (!buf) throw new CairnError(Code.INTERNAL, 'object writer used after commit or abort');
      return buf;
    };
    const release = () => {
      if (buf && this.free.length < KEPT) this.free.push(buf);
      buf = undefined;
    };
    return {
      write: async (data) => {
        let into = held();
        if (used + data.length > into.length) {
          // By a quarter, not doubling: a buffer ends at most a quarter above the largest pack
          // rather than near twice it, and the copies happen only until the kept buffers are grown.
          const grown = Buffer.allocUnsafeSlow(Math.max(Math.ceil(into.length * 1.25), used + data.length));
          into.copy(grown, 0, 0, used);
          buf = into = grown;
        }
        data.copy(into, used);
        used += data.length;
      },
      commit: async (key) => {
        await this.put(key, held().subarray(0, used));
        release();
      },
      abort: async () => release(),
    };
  }
}

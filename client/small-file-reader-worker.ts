import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { BlobCompressor } from '../common/compression.js';
import { hash, ID_BYTES } from '../common/hash.js';
import { noLongerRegular, READ_REGULAR_FLAGS } from './regular-file.js';
import type { ReadBatch, ReadBatchResult, ReaderSetup, SmallFileOutcome } from './small-file-reader.js';

const setup = workerData as ReaderSetup;
const compressor = setup.level === undefined ? undefined : new BlobCompressor(setup.level);
/** One byte past the largest small file: a file that fills it has grown and is streamed instead. */
const scratch = Buffer.allocUnsafeSlow(setup.maxFileSize + 1);
/** Output buffers handed back by the main thread once their bytes were offered. */
const spare: ArrayBuffer[] = [];

/**
 * The whole file in one synchronous open-read-close: on a cached tree that costs a few
 * microseconds where promise round trips through the libuv pool cost ten times more, and on
 * a cold one it blocks only this thread while the others keep the disk busy.
 */
function readWhole(abs: string, size: number): number | 'grew' {
  const fd = openSync(abs, READ_REGULAR_FLAGS);
  try {
    if (!fstatSync(fd).isFile()) throw noLongerRegular(abs);
    const want = Math.min(size + 1, scratch.length);
    let got = 0;
    while (got < want) {
      const n = readSync(fd, scratch, got, want - got, got);
      if (n === 0) break;
      got += n;
    }
    return got > size ? 'grew' : got;
  } finally {
    closeSync(fd);
  }
}

function run(job: ReadBatch): { result: ReadBatchResult; transfer: ArrayBuffer[] } {
  const ab = spare.pop() ?? new ArrayBuffer(setup.outputBytes);
  const out = Buffer.from(ab);
  // Zeroed: the slots of files not read are sent too, and must not carry stale memory.
  const ids = Buffer.alloc(job.files.length * ID_BYTES);
  const outcomes: SmallFileOutcome[] = [];
  let at = 0;
  for (let i = 0; i < job.files.length; i++) {
    const { abs, size } = job.files[i];
    let got: number | 'grew';
    try {
      got = readWhole(abs, size);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      outcomes.push({ kind: 'error', message: e.message, code: e.code });
      continue;
    }
    if (got === 'grew') {
      outcomes.push({ kind: 'grew' });
      continue;
    }
    const raw = scratch.subarray(0, got);
    hash(raw).copy(ids, i * ID_BYTES);
    // Nearly every small file read is new or changed, so its bytes will be uploaded: compressing
    // here saves a trip to a compression worker per file. An empty file has no chunk.
    const packed = got > 0 && compressor ? compressor.pack(raw) : undefined;
    const data = packed ?? raw;
    if (data.copy(out, at) !== data.length) throw new Error(`batch buffer of ${out.length} bytes overflowed at ${abs}`);
    outcomes.push({ kind: 'read', offset: at, length: data.length, rawLength: got, compressed: packed !== undefined });
    at += data.length;
  }
  return { result: { seq: job.seq, outcomes, ids, data: new Uint8Array(ab) }, transfer: [ab] };
}

parentPort!.on('message', (m: ReadBatch | { recycle: ArrayBuffer }) => {
  if ('recycle' in m) {
    spare.push(m.recycle);
    return;
  }
  const { result, transfer } = run(m);
  parentPort!.postMessage(result, transfer);
});

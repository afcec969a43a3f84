import { parentPort, workerData } from 'node:worker_threads';
import { BlobCompressor } from '../common/compression.js';

interface Job {
  seq: number;
  data: Uint8Array;
}

const compressor = new BlobCompressor((workerData as { level: number }).level);

parentPort!.on('message', (job: Job) => {
  const raw = Buffer.from(job.data.buffer, job.data.byteOffset, job.data.byteLength);
  const packed = compressor.pack(raw);
  // The result goes back in the chunk's own buffer (kept compressed only when smaller), so
  // no thread allocates per chunk and the caller can reuse the buffer.
  if (packed) packed.copy(raw);
  const data = packed ? raw.subarray(0, packed.length) : raw;
  parentPort!.postMessage({ seq: job.seq, data, compressed: packed !== undefined }, [data.buffer as ArrayBuffer]);
});

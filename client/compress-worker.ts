import { parentPort, workerData } from 'node:worker_threads';
import { BlobCompressor, ownedBuffer } from '../common/compression.js';

interface Job {
  seq: number;
  data: Uint8Array;
}

const compressor = new BlobCompressor((workerData as { level: number }).level);

parentPort!.on('message', (job: Job) => {
  const raw = Buffer.from(job.data.buffer, job.data.byteOffset, job.data.byteLength);
  const packed = compressor.compress(raw);
  // Whatever comes back goes by transfer, so no chunk is copied between threads.
  const data = ownedBuffer(packed.data);
  parentPort!.postMessage({ seq: job.seq, data, compressed: packed.compressed }, [data.buffer as ArrayBuffer]);
});

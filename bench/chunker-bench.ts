/** Throughput of the FastCDC chunker: `npx tsc && node dist/bench/chunker-bench.js`.
 *  MB/s counts input bytes (10^6), including the minSize bytes that FastCDC skips unhashed. */
import { randomFillSync } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Chunker, DEFAULT_CHUNKER_PARAMS } from '../common/chunker.js';
import { chunkViews, readBufferSize, splitBuffer } from '../common/chunk-reader.js';

const MiB = 1024 * 1024;
const ROUNDS = 3;

function randomBytes(len: number): Buffer {
  const buf = Buffer.allocUnsafeSlow(len);
  // randomFillSync is limited to 2^31-1 bytes per call, so fill in slices.
  for (let off = 0; off < len; off += 64 * MiB) {
    randomFillSync(buf, off, Math.min(64 * MiB, len - off));
  }
  return buf;
}

function report(what: string, bytes: number, seconds: number[], chunks: number): void {
  const rates = seconds.map((s) => (bytes / 1e6 / s).toFixed(0)).join(', ');
  const best = (bytes / 1e6 / Math.min(...seconds)).toFixed(0);
  const mean = (bytes / chunks / MiB).toFixed(2);
  console.log(`${what}: best ${best} MB/s (rounds: ${rates}); ${chunks} chunks, mean ${mean} MiB`);
}

async function main(): Promise<void> {
  const chunker = new Chunker(DEFAULT_CHUNKER_PARAMS);

  const data = randomBytes(256 * MiB);
  const cutTimes: number[] = [];
  let cutChunks = 0;
  for (let r = 0; r < ROUNDS; r++) {
    const t0 = performance.now();
    cutChunks = splitBuffer(data, chunker).length;
    cutTimes.push((performance.now() - t0) / 1000);
  }
  report('Chunker.cut, 256 MiB in memory, copied to be cut', data.length, cutTimes, cutChunks);

  // The archiver's path: bytes that lie in the chunker's own memory are cut in place.
  const [hosted] = chunker.readBuffers(1, data.length);
  data.copy(hosted!);
  const hostedTimes: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const t0 = performance.now();
    cutChunks = splitBuffer(hosted!, chunker).length;
    hostedTimes.push((performance.now() - t0) / 1000);
  }
  report('Chunker.cut, 256 MiB in its read buffer', data.length, hostedTimes, cutChunks);

  const dir = await mkdtemp(join(tmpdir(), 'cairn-chunker-bench-'));
  try {
    const path = join(dir, 'data');
    const fileSize = 512 * MiB;
    const w = await open(path, 'w');
    for (let i = 0; i < fileSize / data.length; i++) await w.write(data);
    await w.close();
    // The file is twice the same 256 MiB; chunk boundaries resynchronise after the seam, so the
    // second half costs the same as fresh random data.
    const readTimes: number[] = [];
    let readChunksCount = 0;
    const [readBuffer] = chunker.readBuffers(1, readBufferSize(chunker));
    for (let r = 0; r < ROUNDS; r++) {
      const fh = await open(path, 'r');
      const t0 = performance.now();
      let count = 0;
      let bytes = 0;
      for await (const chunk of chunkViews(fh, chunker, undefined, readBuffer)) {
        count++;
        bytes += chunk.length;
      }
      readTimes.push((performance.now() - t0) / 1000);
      if (bytes !== fileSize) throw new Error(`chunkViews returned ${bytes} bytes of ${fileSize}`);
      readChunksCount = count;
      await fh.close();
    }
    report('chunkViews, 512 MiB file (page cache), into a read buffer of the chunker', fileSize, readTimes, readChunksCount);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();

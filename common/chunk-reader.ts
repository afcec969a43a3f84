import type { FileHandle } from 'node:fs/promises';
import type { Chunker } from './chunker.js';

const MIN_READ_BUFFER = 8 * 1024 * 1024;

/** Reads a file sequentially from offset 0 and yields its content-defined chunks as views of
 *  the read buffer, each valid only until the generator is resumed: a caller that keeps one
 *  copies it (into a buffer it reuses, say). Memory is bounded: one read buffer of
 *  max(8 MiB, 2*maxSize) whatever the file size. A file smaller than minSize is one chunk; an
 *  empty file yields nothing.
 *  readSize caps the bytes asked of each read() (default: all the room in the buffer); a small
 *  one only makes more, shorter reads and never changes the chunks. */
export async function* chunkViews(
  fh: FileHandle,
  chunker: Chunker,
  readSize?: number,
  readBuffer?: Buffer,
): AsyncGenerator<Buffer> {
  if (readSize !== undefined && !(Number.isSafeInteger(readSize) && readSize > 0)) {
    throw new RangeError(`readSize must be a positive integer, got ${readSize}`);
  }
  const maxSize = chunker.maxSize;
  // Twice maxSize: after cut() asks for more data, fewer than maxSize bytes are pending, so
  // moving them to the front always leaves room for at least maxSize more.
  const buf = readBuffer ?? Buffer.allocUnsafeSlow(readBufferSize(chunker));
  if (buf.length < 2 * maxSize) throw new RangeError(`read buffer of ${buf.length} bytes is smaller than twice the maximum chunk`);
  let start = 0;
  let end = 0;
  let filePos = 0;
  for (;;) {
    // Compacting only when the room runs short keeps reads large: each refill makes cut()
    // rescan the pending partial chunk, so tiny reads near the end of the buffer would cost.
    if (buf.length - end < maxSize) {
      buf.copyWithin(0, start, end);
      end -= start;
      start = 0;
    }
    const room = buf.length - end;
    const want = readSize === undefined ? room : Math.min(readSize, room);
    const { bytesRead } = await fh.read(buf, end, want, filePos);
    if (bytesRead === 0) break;
    end += bytesRead;
    filePos += bytesRead;
    for (let n = chunker.cut(buf, start, end); n > 0; n = chunker.cut(buf, start, end)) {
      yield buf.subarray(start, start + n);
      start += n;
    }
  }
  if (start < end) yield buf.subarray(start, end);
}

/** The read buffer chunkViews needs; callers that read many files allocate it once and pass it in. */
export function readBufferSize(chunker: Chunker): number {
  return Math.max(MIN_READ_BUFFER, 2 * chunker.maxSize);
}

/** The chunk lengths of in-memory data, the same as chunkViews would yield for a file of it. */
export function splitBuffer(data: Uint8Array, chunker: Chunker): number[] {
  const lengths: number[] = [];
  for (let pos = 0; pos < data.length; ) {
    const n = chunker.cut(data, pos, data.length);
    const len = n > 0 ? n : data.length - pos;
    lengths.push(len);
    pos += len;
  }
  return lengths;
}

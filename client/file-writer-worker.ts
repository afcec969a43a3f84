import { closeSync, constants, fchmodSync, futimesSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import type { WholeFile, WriteJob, WriteResult } from './file-writer.js';

/**
 * Writes whole small files with plain system calls. Creating a file while large files are
 * flushing waits on the file system journal for up to milliseconds: here that wait stalls
 * only this thread, not the event loop that inflates and verifies the next chunks.
 */
function writeWhole(f: WholeFile): void {
  const fd = openSync(f.tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    try {
      for (let off = 0; off < f.data.length; ) off += writeSync(fd, f.data, off, f.data.length - off, off);
      fchmodSync(fd, f.mode);
      futimesSync(fd, f.mtime, f.mtime);
    } finally {
      closeSync(fd);
    }
    renameSync(f.tmp, f.abs);
  } catch (err) {
    rmSync(f.tmp, { force: true });
    throw err;
  }
}

parentPort!.on('message', (job: WriteJob) => {
  const result: WriteResult = { seq: job.seq };
  try {
    for (const f of job.files) writeWhole(f);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    result.error = { message: e.message, code: e.code };
  }
  parentPort!.postMessage(result);
});

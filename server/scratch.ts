import { promises as fs } from 'node:fs';
import path from 'node:path';
import { resourceExhausted } from '../common/errors.js';
import { IndexDb } from './index-db.js';

/**
 * A directory beside a repository's index that no repository's index can be: indexes are
 * `<root>/<name>` and names start with a letter or digit, so `<root>/.<kind>/` is out of their
 * reach. (`<index>.scratch-check` was not: the check of repository `default` removed the live
 * index of a repository named `default.scratch-check`.)
 */
export function besideIndex(indexDir: string, kind: string, name: string): string {
  return path.join(path.dirname(indexDir), `.${kind}`, `${path.basename(indexDir)}-${name}`);
}

/** LevelDB reports a full disk as an IO error whose text says so; Node as ENOSPC. */
function isFullDisk(err: unknown): boolean {
  const e = err as NodeJS.ErrnoException & { cause?: { message?: string } };
  return e.code === 'ENOSPC' || /No space left on device/.test(`${e.message} ${e.cause?.message ?? ''}`);
}

/**
 * A throwaway LevelDB beside a repository's index (`<root>/.scratch/<name>-<purpose>`), for sets
 * that grow with the number of blobs: prune's mark set, check's visited trees. They live on
 * disk so server memory does not grow with the repository. A crash leaves the directory
 * behind; the next run of the same purpose starts by removing it.
 */
export class Scratch {
  private constructor(readonly db: IndexDb) {}

  /**
   * Runs `fn` with a fresh scratch index, removed afterwards. A full disk is when prune is
   * needed most, and its scratch index needs room first: that failure, at the start or part
   * way (prune is crash-safe, so stopping part way loses nothing), is RESOURCE_EXHAUSTED
   * naming the directory rather than LevelDB's IO error.
   */
  static async run<T>(indexDir: string, purpose: string, fn: (scratch: Scratch) => Promise<T>): Promise<T> {
    const dir = besideIndex(indexDir, 'scratch', purpose);
    const full = () => resourceExhausted(`${purpose} needs free space for its scratch index in ${path.dirname(dir)}, and that filesystem is full: free some space there (or move --index to a roomier disk) and run ${purpose} again; nothing was lost`);
    await fs.rm(dir, { recursive: true, force: true });
    let scratch: Scratch;
    try {
      await fs.mkdir(path.dirname(dir), { recursive: true });
      scratch = new Scratch(await IndexDb.open(dir));
    } catch (err) {
      await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
      throw isFullDisk(err) ? full() : err;
    }
    try {
      return await fn(scratch);
    } catch (err) {
      throw isFullDisk(err) ? full() : err;
    } finally {
      await scratch.db.close().catch(() => undefined);
      await fs.rm(dir, { recursive: true, force: true });
    }
  }
}

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

/**
 * A throwaway LevelDB beside a repository's index (`<root>/.scratch/<name>-<purpose>`), for sets
 * that grow with the number of blobs: prune's mark set, check's visited trees. They live on
 * disk so server memory does not grow with the repository. A crash leaves the directory
 * behind; the next run of the same purpose starts by removing it.
 */
export class Scratch {
  private constructor(
    readonly db: IndexDb,
    private readonly dir: string,
  ) {}

  static async open(indexDir: string, purpose: string): Promise<Scratch> {
    const dir = besideIndex(indexDir, 'scratch', purpose);
    await fs.rm(dir, { recursive: true, force: true });
    try {
      await fs.mkdir(path.dirname(dir), { recursive: true });
      return new Scratch(await IndexDb.open(dir), dir);
    } catch (err) {
      await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
      const e = err as NodeJS.ErrnoException & { cause?: { message?: string } };
      // A full disk is when prune is needed most, and its scratch index needs room first.
      if (e.code === 'ENOSPC' || /No space left/.test(e.cause?.message ?? '')) {
        throw resourceExhausted(`${purpose} needs free space for its scratch index in ${path.dirname(dir)}, and that filesystem is full: free some space there (or move --index to a roomier disk) and run ${purpose} again; nothing was changed`);
      }
      throw err;
    }
  }

  async destroy(): Promise<void> {
    await this.db.close();
    await fs.rm(this.dir, { recursive: true, force: true });
  }
}

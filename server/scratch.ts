import { promises as fs } from 'node:fs';
import { IndexDb } from './index-db.js';

/**
 * A throwaway LevelDB beside a repository's index (`<index>.scratch-<purpose>`), for sets
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
    const dir = `${indexDir}.scratch-${purpose}`;
    await fs.rm(dir, { recursive: true, force: true });
    return new Scratch(await IndexDb.open(dir), dir);
  }

  async destroy(): Promise<void> {
    await this.db.close();
    await fs.rm(this.dir, { recursive: true, force: true });
  }
}

import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { failedPrecondition } from '../common/errors.js';
import { IndexDb } from './index-db.js';
import type { ObjectStore } from './object-store.js';
import { PrefixedStore } from './prefixed-store.js';
import { Repository } from './repository.js';

export interface RebuildSummary {
  repository: string;
  index: string;
  packs: number;
  chunks: number;
  snapshots: number;
  policies: number;
  protected: number;
  seconds: number;
}

/**
 * `cairn-server rebuild-index`: recreates a repository's LevelDB index from its object store
 * (index segments, else pack trailers; snapshots, protections and policies from their objects).
 * Removing the index's owner marker is what makes Repository.open rebuild; opening the index
 * first takes LevelDB's lock, so an index a running server holds is refused, not clobbered.
 * An index too damaged to open is moved aside, not deleted.
 */
export async function rebuildIndex(opts: { store: ObjectStore; indexDir: string; repository: string; log: Logger }): Promise<RebuildSummary> {
  const started = Date.now();
  const dir = path.join(opts.indexDir, opts.repository);
  let index: IndexDb | undefined;
  try {
    index = await IndexDb.open(dir);
  } catch (err) {
    const e = err as { code?: string; cause?: { code?: string }; message: string };
    if ((e.cause?.code ?? e.code) === 'LEVEL_LOCKED') throw failedPrecondition(`index ${dir} is in use: stop cairn-server before rebuilding it`);
    const aside = `${dir}.unreadable-${Date.now()}`;
    opts.log.warn({ index: dir, movedTo: aside, err: e.cause?.code ?? e.message }, 'index cannot be opened: moved aside, rebuilding from scratch');
    await fs.rename(dir, aside);
  }
  if (index) {
    await index.db.del('meta/repository');
    await index.close();
  }
  // The same layout as CairnServer.openRepository: each repository under repos/<name>/.
  const repo = await Repository.open({ name: opts.repository, store: new PrefixedStore(opts.store, `repos/${opts.repository}/`), indexDir: dir, log: opts.log });
  try {
    const count = async (prefix: string) => {
      let n = 0;
      for await (const _key of repo.index.keys(prefix)) n++;
      return n;
    };
    return {
      repository: opts.repository,
      index: dir,
      packs: await count('pack/'),
      chunks: await count('chunk/'),
      snapshots: await count('snap/'),
      policies: await count('policy/'),
      protected: await count('protect/'),
      seconds: (Date.now() - started) / 1000,
    };
  } finally {
    await repo.close();
  }
}

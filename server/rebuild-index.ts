import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { failedPrecondition, notFound } from '../common/errors.js';
import { IndexDb } from './index-db.js';
import type { ObjectStore } from './object-store.js';
import { PrefixedStore } from './prefixed-store.js';
import { Repository } from './repository.js';
import { besideIndex } from './scratch.js';
import { SNAPSHOT_PREFIX } from './snapshot-record.js';
import { WriterLease } from './writer-lease.js';

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
 *
 * It takes the repository's writer lease, as a server does: a server with an index of its own
 * elsewhere may be writing to the same store, and a rebuild beside it would delete that
 * writer's temporaries as a crash's leftovers and miss the packs it adds, leaving an index
 * that says chunks of its later snapshots are not there.
 */
export async function rebuildIndex(opts: { store: ObjectStore; indexDir: string; repository: string; log: Logger; leaseTtlMs: number }): Promise<RebuildSummary> {
  const started = Date.now();
  const dir = path.join(opts.indexDir, opts.repository);
  // The same layout as CairnServer.openRepository: each repository under repos/<name>/.
  const store = new PrefixedStore(opts.store, `repos/${opts.repository}/`);
  // A mistyped name or store would otherwise be initialised as a new, empty repository; a
  // repository that lost only its config still has data to rebuild from (and gets a new one).
  if (!(await store.head('config'))) {
    if (!(await holdsAnything(store))) {
      throw notFound(`no repository ${opts.repository} in this store (repos/${opts.repository}/ holds no config, snapshots, packs or index): nothing to rebuild; check --store and --repository`);
    }
    opts.log.warn({ repository: opts.repository }, 'repository config missing: a new one is written, the rest is rebuilt from snapshots, index segments and packs');
  }
  const index = await openOrMoveAside(dir, opts.log);
  let lost: Error | undefined;
  const lease = new WriterLease(store, opts.leaseTtlMs, opts.log, (err) => (lost = err));
  try {
    await lease.acquire();
  } catch (err) {
    await index?.close();
    throw err;
  }
  try {
    try {
      if (index) await index.db.del('meta/repository');
    } finally {
      await index?.close();
    }
    const summary = await reopenAndCount(store, dir, started, opts);
    if (lost) throw lost;
    return summary;
  } finally {
    await lease.release();
  }
}

/**
 * The index, or undefined when there is none yet (nothing is created before the lease is
 * held) or it could not be opened and was moved aside; an index in use is refused.
 */
async function openOrMoveAside(dir: string, log: Logger): Promise<IndexDb | undefined> {
  if (!(await fs.stat(dir).then(() => true, () => false))) return undefined;
  try {
    return await IndexDb.open(dir);
  } catch (err) {
    const e = err as { code?: string; cause?: { code?: string }; message: string };
    if ((e.cause?.code ?? e.code) === 'LEVEL_LOCKED') throw failedPrecondition(`index ${dir} is in use: stop cairn-server before rebuilding it`);
    const aside = besideIndex(dir, 'unreadable', String(Date.now()));
    log.warn({ index: dir, movedTo: aside, err: e.cause?.code ?? e.message }, 'index cannot be opened: moved aside, rebuilding from scratch');
    await fs.mkdir(path.dirname(aside), { recursive: true });
    await fs.rename(dir, aside);
    return undefined;
  }
}

async function reopenAndCount(store: ObjectStore, dir: string, started: number, opts: { repository: string; log: Logger }): Promise<RebuildSummary> {
  const repo = await Repository.open({ name: opts.repository, store, indexDir: dir, log: opts.log });
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

async function holdsAnything(store: ObjectStore): Promise<boolean> {
  for (const prefix of [SNAPSHOT_PREFIX, 'packs/', 'index/']) for await (const _ of store.list(prefix)) return true;
  return false;
}

import type { Logger } from 'pino';
import { failedPrecondition, invalidArgument, notFound } from '../common/errors.js';
import type { Snapshot } from '../common/messages.js';
import { Mutex } from './gc-lock.js';
import { protectKey, snapKey, type Batch } from './index-db.js';
import { applyPolicy, isEmptyPolicy, policyFromProto, policyToProto, type RetentionPolicy } from './retention.js';
import type { Policy } from '../common/admin-messages.js';
import { snapshotIndexKeys, validateName, type Repository } from './repository.js';
import { snapshotObjectKey } from './snapshot-record.js';

export interface ForgetDecision {
  snapshot: Snapshot;
  keep: boolean;
  /** Why a kept snapshot stays (restic's wording); empty for a removed one. */
  reasons: string[];
}

export interface ForgetOptions {
  policy?: RetentionPolicy;
  /** Snapshots to forget by id, unique prefix or "latest"; instead of a policy. */
  snapshotRefs?: string[];
  dataset?: string;
  host?: string;
  dryRun?: boolean;
  now?: Date;
}

const policyKey = (dataset: string) => `policy/${dataset}`;
const policyObject = (dataset: string) => `policies/${dataset}`;
const protectedObject = (id: string) => `protected/${id}`;

/**
 * Forget, protect and policy changes of one repository take turns, so a snapshot protected
 * while a forget is deciding cannot be removed by it.
 */
const turns = new WeakMap<Repository, Mutex>();

function inTurn<T>(repo: Repository, fn: () => Promise<T>): Promise<T> {
  let m = turns.get(repo);
  if (!m) turns.set(repo, (m = new Mutex()));
  return m.run(fn);
}

/**
 * Applies a retention policy (restic's forget, see retention.ts) or removes named snapshots.
 * Only snapshot records go; their data stays until a prune. Protected snapshots are never removed.
 */
export async function forget(repo: Repository, opts: ForgetOptions): Promise<ForgetDecision[]> {
  const refs = opts.snapshotRefs ?? [];
  if (refs.length > 0 && opts.policy && !isEmptyPolicy(opts.policy)) throw invalidArgument('name snapshots to forget or give keep options, not both');
  if (refs.length === 0 && !opts.policy) throw invalidArgument('forget needs keep options or snapshot ids');
  const dataset = opts.dataset ? validateName('dataset', opts.dataset) : undefined;
  const host = opts.host ? validateName('host', opts.host) : undefined;
  return inTurn(repo, async () => {
    let decisions: ForgetDecision[];
    if (refs.length > 0) {
      decisions = await named(repo, refs, { dataset, host });
    } else {
      const snapshots: Snapshot[] = [];
      for await (const s of repo.listSnapshots({ dataset, host })) snapshots.push(s);
      decisions = applyPolicy(snapshots, opts.policy!, opts.now);
    }
    if (!opts.dryRun) for (const d of decisions) if (!d.keep) await deleteSnapshot(repo, d.snapshot);
    return decisions;
  });
}

async function named(repo: Repository, refs: string[], filter: { dataset?: string; host?: string }): Promise<ForgetDecision[]> {
  const chosen = new Map<string, Snapshot>();
  for (const ref of refs) {
    const s = await repo.resolveSnapshot(ref, filter);
    // An id outside the filter given with it is a mistake to stop at, not a snapshot to delete.
    for (const field of ['dataset', 'host'] as const) {
      if (filter[field] !== undefined && s[field] !== filter[field]) {
        throw notFound(`snapshot ${s.id} is of ${field} ${s[field]}, not ${filter[field]}: nothing forgotten`);
      }
    }
    if (s.protected) throw failedPrecondition(`snapshot ${s.id} is protected; unprotect it before forgetting it`);
    chosen.set(s.id, s);
  }
  return [...chosen.values()].map((snapshot) => ({ snapshot, keep: false, reasons: [] }));
}

async function deleteSnapshot(repo: Repository, s: Snapshot): Promise<void> {
  // The object first: Repository.open re-indexes snapshot objects it finds, so an object left
  // behind by a crash would bring the snapshot back after a prune had freed its data.
  await repo.store.delete([snapshotObjectKey(s.id)]);
  const ops: Batch = [{ type: 'del', key: snapKey(s.id) }, ...snapshotIndexKeys(s).map((key) => ({ type: 'del' as const, key }))];
  await repo.index.batch(ops);
  repo.log.info({ snapshot: s.id, dataset: s.dataset, host: s.host, time: s.time }, 'snapshot forgotten');
}

/**
 * Protection lives as `protected/<id>` in the store (rebuild-index restores it) and
 * `protect/<id>` in the index. The object is written or removed first; a crash in between
 * leaves the index protecting the snapshot, never the other way round for an unprotect.
 */
export async function setProtected(repo: Repository, ref: string, on: boolean): Promise<Snapshot> {
  if (!ref) throw invalidArgument('name the snapshot to protect or unprotect');
  return inTurn(repo, async () => {
    const s = await repo.resolveSnapshot(ref);
    if (on) {
      await repo.store.put(protectedObject(s.id), Buffer.from(JSON.stringify({ snapshot: s.id })));
      await repo.index.putMarkers([protectKey(s.id)]);
    } else {
      await repo.store.delete([protectedObject(s.id)]);
      await repo.index.db.del(protectKey(s.id));
    }
    repo.log.info({ snapshot: s.id, protected: on }, on ? 'snapshot protected' : 'snapshot unprotected');
    return { ...s, protected: on };
  });
}

/**
 * Stores a dataset's policy as `policies/<dataset>` (what rebuild-index reads) and
 * `policy/<dataset>` in the index; an empty policy removes both.
 */
export async function setPolicy(repo: Repository, proto: Partial<Policy>): Promise<Policy> {
  const dataset = validateName('dataset', proto.dataset ?? '');
  const policy = policyFromProto(proto);
  // Checks the counts the way forget will, so a bad policy is refused now, not after a commit.
  applyPolicy([], policy);
  const normalized = policyToProto(policy, dataset);
  return inTurn(repo, async () => {
    if (isEmptyPolicy(policy)) {
      await repo.store.delete([policyObject(dataset)]);
      await repo.index.db.del(policyKey(dataset));
    } else {
      await repo.store.put(policyObject(dataset), Buffer.from(JSON.stringify(normalized)));
      await repo.index.putJson(policyKey(dataset), normalized);
    }
    repo.log.info({ policy: normalized }, 'retention policy set');
    return normalized;
  });
}

export async function getPolicy(repo: Repository, dataset: string): Promise<Policy> {
  const p = await repo.index.getJson<Policy>(policyKey(validateName('dataset', dataset)));
  if (!p) throw notFound(`no retention policy is stored for dataset ${dataset}`);
  return p;
}

/**
 * The commit hook: applies the dataset's stored policy (forget only; prune is a separate,
 * heavier decision). Never throws: the snapshot is committed whatever happens here.
 */
export async function applyPolicyAfterCommit(repo: Repository, dataset: string, log: Logger): Promise<void> {
  try {
    const p = await repo.index.getJson<Policy>(policyKey(dataset));
    if (!p) return;
    const decisions = await forget(repo, { policy: policyFromProto(p), dataset });
    const removed = decisions.filter((d) => !d.keep).map((d) => d.snapshot.id);
    if (removed.length > 0) log.info({ dataset, removed }, 'retention policy applied after commit');
  } catch (err) {
    log.error({ dataset, err: (err as Error).message }, 'retention policy could not be applied after commit');
  }
}

import type * as grpc from '@grpc/grpc-js';
import { parseDurationMs, wireTime } from '../common/durations.js';
import { invalidArgument } from '../common/errors.js';
import type { Node } from '../common/messages.js';
import { DEFAULT_STALE_AFTER, type DiffEntry, type DiffRequest, type FindMatch, type FindRequest, type HeartbeatRequest, type StatsReply, type StatsRequest, type StatusReply, type StatusRequest } from '../common/query-messages.js';
import { recordHeartbeat, repositoryStats, repositoryStatus } from './repo-stats.js';
import { validateName, type Repository } from './repository.js';
import { serverStream, unary, type ServiceDeps } from './service.js';
import { diffTrees } from './tree-diff.js';
import { TreeFinder } from './tree-find.js';

function countingReader(repo: Repository): { read: (id: Buffer) => Promise<Node[]>; count: () => number } {
  let n = 0;
  return {
    read: (id) => {
      n++;
      return repo.readTree(id);
    },
    count: () => n,
  };
}

/** History queries that run on the server, next to the index, so whole trees never cross the wire. */
export function queryHandlers(deps: ServiceDeps): grpc.UntypedServiceImplementation {
  const { auth, log } = deps;

  const diff = async (req: DiffRequest, { repo }: { repo: Repository }, send: (m: DiffEntry) => Promise<void>) => {
    if (!req.a || !req.b) throw invalidArgument('Diff needs two snapshot references, a and b');
    const a = await repo.resolveSnapshot(req.a);
    const b = await repo.resolveSnapshot(req.b);
    const reader = countingReader(repo);
    // Held back one entry, so the last one sent can carry trees_read.
    let pending: DiffEntry | undefined;
    for await (const c of diffTrees(reader.read, Buffer.from(a.rootTree, 'hex'), Buffer.from(b.rootTree, 'hex'))) {
      if (pending) await send(pending);
      pending = { ...c, treesRead: '0' };
    }
    pending ??= { path: '', change: '', type: 'DIR', oldSize: '0', newSize: '0', treesRead: '0' };
    await send({ ...pending, treesRead: String(reader.count()) });
  };

  const find = async (req: FindRequest, { repo }: { repo: Repository }, send: (m: FindMatch) => Promise<void>, stillWanted: () => void) => {
    const finder = new TreeFinder((id) => repo.readTree(id), req.pattern, stillWanted);
    const filter = {
      dataset: req.dataset ? validateName('dataset', req.dataset) : undefined,
      host: req.host ? validateName('host', req.host) : undefined,
      since: wireTime(req.since, 'since'),
    };
    let sent = 0;
    for await (const s of repo.listSnapshots(filter)) {
      stillWanted();
      for await (const hit of finder.find(Buffer.from(s.rootTree, 'hex'))) {
        await send({ snapshot: s.id, time: s.time, ...hit });
        if (req.limit && ++sent >= req.limit) return;
      }
    }
  };

  const stats = async (req: StatsRequest, { repo }: { repo: Repository }): Promise<StatsReply> =>
    repositoryStats(repo.index, req.dataset ? validateName('dataset', req.dataset) : undefined);

  const status = async (req: StatusRequest, { repo }: { repo: Repository }): Promise<StatusReply> => {
    const staleAfterMs = parseDurationMs(req.staleAfter || DEFAULT_STALE_AFTER);
    if (staleAfterMs <= 0) throw invalidArgument(`stale_after must be longer than zero, got ${JSON.stringify(req.staleAfter)}`);
    const now = wireTime(req.now, 'now');
    return { rows: await repositoryStatus(repo, { now: now ? Date.parse(now) : Date.now(), staleAfterMs }) };
  };

  const heartbeat = async (req: HeartbeatRequest, { repo }: { repo: Repository }) => {
    const record = await recordHeartbeat(repo.index, req);
    log.info({ dataset: req.dataset, host: req.host, ok: record.ok, error: record.error || undefined }, 'heartbeat');
    return {};
  };

  return {
    Diff: serverStream('Diff', auth, log, diff),
    Find: serverStream('Find', auth, log, find),
    Stats: unary('Stats', auth, log, stats),
    Status: unary('Status', auth, log, status),
    Heartbeat: unary('Heartbeat', auth, log, heartbeat),
  };
}

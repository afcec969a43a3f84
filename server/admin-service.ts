import type * as grpc from '@grpc/grpc-js';
import type { CheckReply, CheckRequest, ForgetReply, ForgetRequest, Policy, ProtectRequest, PruneReply, PruneRequest } from '../common/admin-messages.js';
import { emptySummary, type Snapshot } from '../common/messages.js';
import { check, parsePart } from './checker.js';
import { forget, getPolicy, setPolicy, setProtected, type ForgetDecision } from './forget.js';
import { DEFAULT_MAX_UNUSED, prune, type PruneResult } from './prune.js';
import type { Repository } from './repository.js';
import { policyFromProto } from './retention.js';
import { unary, type ServiceDeps } from './service.js';

function pruneReply(r: PruneResult): PruneReply {
  return {
    packsDeleted: String(r.packsDeleted),
    packsRewritten: String(r.packsRewritten),
    bytesFreed: String(r.bytesFreed),
    chunksRemoved: String(r.chunksRemoved),
    bytesUnusedKept: String(r.bytesUnusedKept),
    requests: JSON.stringify(r.requests),
    dryRun: r.dryRun,
  };
}

type Ctx = { repo: Repository };

/** Bytes of decisions a Forget reply lists: 130,000 snapshots' full records passed the 65 MiB message limit after forget had done its work. */
const MAX_LISTED_DECISION_BYTES = 32 * 1024 * 1024;

/** The decisions to list, in order, within the budget; what a reader of them needs of each snapshot, not its paths or summary. */
function listedDecisions(decisions: ForgetDecision[]): ForgetDecision[] {
  const listed: ForgetDecision[] = [];
  let bytes = 0;
  for (const d of decisions) {
    const snapshot = { ...d.snapshot, paths: [], summary: emptySummary() };
    bytes += 200 + snapshot.dataset.length + snapshot.host.length + snapshot.clientVersion.length + snapshot.tags.reduce((n, t) => n + t.length + 2, 0) + d.reasons.reduce((n, r) => n + r.length + 2, 0);
    if (bytes > MAX_LISTED_DECISION_BYTES) break;
    listed.push({ ...d, snapshot });
  }
  return listed;
}

/**
 * Administration: retention, garbage collection, verification, protection. A group of its own,
 * so access control can demand an admin role for these RPC names.
 */
export function adminHandlers(deps: ServiceDeps): grpc.UntypedServiceImplementation {
  const { auth, log } = deps;

  const forgetRpc = async (req: ForgetRequest, { repo }: Ctx): Promise<ForgetReply> => {
    const decisions = await forget(repo, {
      policy: req.policy ? policyFromProto(req.policy) : undefined,
      snapshotRefs: req.snapshotIds,
      dataset: req.dataset || undefined,
      host: req.host || undefined,
      dryRun: req.dryRun,
    });
    const kept = decisions.filter((d) => d.keep).length;
    log.info({ dataset: req.dataset, host: req.host, dryRun: req.dryRun, kept, removed: decisions.length - kept }, 'forget');
    const pruned = req.prune ? await prune(repo, { dryRun: req.dryRun }) : undefined;
    const listed = listedDecisions(decisions);
    return { decisions: listed, prune: pruned ? pruneReply(pruned) : null, kept: String(kept), removed: String(decisions.length - kept), decisionsOmitted: String(decisions.length - listed.length) };
  };

  const pruneRpc = async (req: PruneRequest, { repo }: Ctx): Promise<PruneReply> =>
    pruneReply(await prune(repo, { dryRun: req.dryRun, maxUnused: req.maxUnused > 0 ? req.maxUnused : DEFAULT_MAX_UNUSED }));

  const checkRpc = async (req: CheckRequest, { repo }: Ctx): Promise<CheckReply> => {
    const part = req.readDataPart ? parsePart(req.readDataPart) : undefined;
    const subset = req.readDataSubset > 0 ? req.readDataSubset : undefined;
    const r = await check(repo, { readData: req.readData || part !== undefined || subset !== undefined, subset, part });
    return {
      problems: r.problems,
      snapshotsChecked: String(r.snapshotsChecked),
      treesChecked: String(r.treesChecked),
      packsChecked: String(r.packsChecked),
      blobsRead: String(r.blobsRead),
      packsRead: String(r.packsRead),
      problemsOmitted: String(r.problemsOmitted),
      problemCounts: r.problemCounts.map((c) => ({ kind: c.kind, count: String(c.count) })),
    };
  };

  const setPolicyRpc = async (req: { policy: Policy | null }, { repo }: Ctx): Promise<Policy> => setPolicy(repo, req.policy ?? {});
  const getPolicyRpc = async (req: { dataset: string }, { repo }: Ctx): Promise<Policy> => getPolicy(repo, req.dataset);
  const protectRpc = async (req: ProtectRequest, { repo }: Ctx): Promise<Snapshot> => setProtected(repo, req.ref, req.protected);

  return {
    Forget: unary('Forget', auth, log, forgetRpc),
    Prune: unary('Prune', auth, log, pruneRpc),
    Check: unary('Check', auth, log, checkRpc),
    SetPolicy: unary('SetPolicy', auth, log, setPolicyRpc),
    GetPolicy: unary('GetPolicy', auth, log, getPolicyRpc),
    Protect: unary('Protect', auth, log, protectRpc),
  };
}

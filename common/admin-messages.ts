/**
 * Wire shapes of the administration RPCs (Forget, Prune, Check, SetPolicy, GetPolicy, Protect),
 * converted as in messages.ts: camelCase, 64-bit integers as decimal strings, unset messages as
 * null. They mirror proto/cairn.proto and nothing else defines them.
 */
import type { Snapshot } from './messages.js';

/** A retention policy; durations in restic's syntax ("1y2m3d4h"), '' = unset. */
export interface Policy {
  dataset: string;
  keepLast: number;
  keepHourly: number;
  keepDaily: number;
  keepWeekly: number;
  keepMonthly: number;
  keepYearly: number;
  keepWithin: string;
  keepWithinHourly: string;
  keepWithinDaily: string;
  keepWithinWeekly: string;
  keepWithinMonthly: string;
  keepWithinYearly: string;
  keepTags: string[];
}

/** A policy that keeps nothing by any rule: the base every --keep-* option or keep_* field fills in. */
export function emptyPolicy(dataset: string): Policy {
  return {
    dataset,
    keepLast: 0,
    keepHourly: 0,
    keepDaily: 0,
    keepWeekly: 0,
    keepMonthly: 0,
    keepYearly: 0,
    keepWithin: '',
    keepWithinHourly: '',
    keepWithinDaily: '',
    keepWithinWeekly: '',
    keepWithinMonthly: '',
    keepWithinYearly: '',
    keepTags: [],
  };
}

export interface ForgetRequest {
  policy: Policy | null;
  dataset: string;
  host: string;
  dryRun: boolean;
  prune: boolean;
  snapshotIds: string[];
}

export interface ForgetDecision {
  snapshot: Snapshot;
  keep: boolean;
  reasons: string[];
}

export interface PruneRequest {
  dryRun: boolean;
  /** Share of unused bytes tolerated, 0..1; 0 (unset) means the default, 5%. */
  maxUnused: number;
}

export interface PruneReply {
  packsDeleted: string;
  packsRewritten: string;
  bytesFreed: string;
  chunksRemoved: string;
  bytesUnusedKept: string;
  /** JSON object of object-store request counts during the prune. */
  requests: string;
  dryRun: boolean;
}

export interface ForgetReply {
  decisions: ForgetDecision[];
  prune: PruneReply | null;
  kept: string;
  removed: string;
  decisionsOmitted: string;
}

export interface CheckRequest {
  readData: boolean;
  readDataSubset: number;
  readDataPart: string;
}

export interface CheckProblem {
  kind: string;
  message: string;
  pack: string;
  chunk: string;
  snapshots: string[];
  files: string[];
}

export interface CheckReply {
  problems: CheckProblem[];
  snapshotsChecked: string;
  treesChecked: string;
  packsChecked: string;
  blobsRead: string;
  packsRead: string;
  problemsOmitted: string;
  problemCounts: Array<{ kind: string; count: string }>;
}

export interface ProtectRequest {
  ref: string;
  protected: boolean;
}

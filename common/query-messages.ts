/**
 * Wire shapes of the query RPCs (Diff, Find, Stats, Status, Heartbeat), converted as in
 * messages.ts: camelCase, 64-bit integers as decimal strings, enums as names. They mirror
 * proto/cairn.proto and nothing else defines them.
 */
import type { NodeType } from './messages.js';

export const DEFAULT_STALE_AFTER = '26h';

export type ChangeKind = 'added' | 'removed' | 'modified' | 'metadata';

export interface DiffRequest {
  a: string;
  b: string;
}

export interface DiffEntry {
  path: string;
  /** '' only on a closing entry that carries nothing but treesRead (an empty diff). */
  change: ChangeKind | '';
  type: NodeType;
  oldSize: string;
  newSize: string;
  treesRead: string;
}

export interface FindRequest {
  pattern: string;
  dataset: string;
  host: string;
  since: string;
  limit: number;
}

export interface FindMatch {
  snapshot: string;
  path: string;
  type: NodeType;
  size: string;
  mtimeNs: string;
  time: string;
}

export interface StatsRequest {
  dataset: string;
}

export interface StatsReply {
  snapshots: string;
  logicalBytes: string;
  storedBytes: string;
  rawBytes: string;
  chunks: string;
  packs: string;
  dedupRatio: number;
  compressionRatio: number;
}

export interface StatusRequest {
  staleAfter: string;
  now: string;
}

export interface StatusRow {
  dataset: string;
  host: string;
  lastSnapshot: string;
  lastTime: string;
  ageSeconds: number;
  bytes: string;
  files: string;
  stale: boolean;
  lastError: string;
  lastErrorTime: string;
  lastSuccessTime: string;
  /** Entries the latest snapshot left out as unreadable (its summary's errors). */
  unreadable: string;
}

export interface StatusReply {
  rows: StatusRow[];
}

export interface HeartbeatRequest {
  dataset: string;
  host: string;
  ok: boolean;
  error: string;
  durationSeconds: number;
  snapshot: string;
}

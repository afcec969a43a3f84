import { invalidArgument } from '../common/errors.js';
import { isHexId } from '../common/hash.js';
import type { Snapshot } from '../common/messages.js';
import type { HeartbeatRequest, StatsReply, StatusRow } from '../common/query-messages.js';
import { prefixEnd, type IndexDb, type PackInfo } from './index-db.js';
import { validateName, type Repository } from './repository.js';

/** Byte offsets inside an encoded Location (see index-db.ts encodeLocation). */
const LOC_RAW_LENGTH = 44;
const LOC_KIND = 48;
const LOC_KIND_TREE = 1;

const ratio = (num: bigint, den: bigint) => (den === 0n ? 0 : Number((num * 1_000_000n) / den) / 1_000_000);

/**
 * Sizes of a repository, each from one streamed LevelDB range (no list of ids in memory):
 * snapshots and logical bytes from snap/, stored bytes and packs from pack/, unique raw
 * bytes and chunks from chunk/.
 *
 * Chunks and raw bytes count data chunks only: tree blobs are metadata, and counting them
 * would make the dedup ratio depend on directory layout. Stored bytes are every pack (trees
 * and trailers included): what the store costs. The compression ratio compares data chunks
 * with data packs only, so trees do not blur it.
 *
 * With a dataset, snapshots and logical bytes are that dataset's; the storage figures stay
 * the repository's, because chunks are shared across datasets and have no single owner, and
 * so the dedup ratio stays the repository's too (all logical bytes over all unique bytes).
 */
export async function repositoryStats(index: IndexDb, dataset?: string): Promise<StatsReply> {
  let snapshots = 0n;
  let logical = 0n;
  let allLogical = 0n;
  for await (const value of index.db.values({ gte: 'snap/', lt: prefixEnd('snap/') })) {
    const s = JSON.parse(value.toString('utf8')) as Snapshot;
    const bytes = BigInt(s.summary?.bytes ?? '0');
    allLogical += bytes;
    if (dataset && s.dataset !== dataset) continue;
    snapshots++;
    logical += bytes;
  }
  let packs = 0n;
  let stored = 0n;
  let dataStored = 0n;
  for await (const value of index.db.values({ gte: 'pack/', lt: prefixEnd('pack/') })) {
    const p = JSON.parse(value.toString('utf8')) as PackInfo;
    packs++;
    stored += BigInt(p.size);
    if (p.kind !== 'TREE') dataStored += BigInt(p.size);
  }
  let chunks = 0n;
  let raw = 0n;
  for await (const loc of index.db.values({ gte: 'chunk/', lt: prefixEnd('chunk/') })) {
    if (loc[LOC_KIND] === LOC_KIND_TREE) continue;
    chunks++;
    raw += BigInt(loc.readUInt32BE(LOC_RAW_LENGTH));
  }
  return {
    snapshots: String(snapshots),
    logicalBytes: String(logical),
    storedBytes: String(stored),
    rawBytes: String(raw),
    chunks: String(chunks),
    packs: String(packs),
    dedupRatio: ratio(allLogical, raw),
    compressionRatio: ratio(raw, dataStored),
  };
}

/** The record kept at heartbeat/<dataset>/<host>: the last report, plus the last error and success seen. */
export interface HeartbeatRecord {
  ok: boolean;
  error: string;
  time: string;
  durationSeconds: number;
  snapshot: string;
  lastError: string;
  lastErrorTime: string;
  lastSuccessTime: string;
}

const heartbeatKey = (dataset: string, host: string) => `heartbeat/${dataset}/${host}`;
const MAX_ERROR_CHARS = 4096;

/** One write per key at a time: a heartbeat reads the previous record to carry its last error forward. */
const heartbeatChains = new Map<string, Promise<unknown>>();

export async function recordHeartbeat(index: IndexDb, req: HeartbeatRequest, now = new Date()): Promise<HeartbeatRecord> {
  const dataset = validateName('dataset', req.dataset);
  const host = validateName('host', req.host);
  if (req.snapshot && !isHexId(req.snapshot)) throw invalidArgument(`heartbeat snapshot ${JSON.stringify(req.snapshot)} is not a snapshot id`);
  if (!(req.durationSeconds >= 0)) throw invalidArgument(`heartbeat duration_seconds must be zero or more, got ${req.durationSeconds}`);
  if (!req.ok && !req.error) throw invalidArgument('a failed heartbeat (ok = false) must say what failed in error');
  const key = heartbeatKey(dataset, host);
  const write = async (): Promise<HeartbeatRecord> => {
    const prev = await index.getJson<HeartbeatRecord>(key);
    const time = now.toISOString();
    const error = req.ok ? '' : req.error.slice(0, MAX_ERROR_CHARS);
    const record: HeartbeatRecord = {
      ok: req.ok,
      error,
      time,
      durationSeconds: req.durationSeconds,
      snapshot: req.snapshot,
      lastError: req.ok ? (prev?.lastError ?? '') : error,
      lastErrorTime: req.ok ? (prev?.lastErrorTime ?? '') : time,
      lastSuccessTime: req.ok ? time : (prev?.lastSuccessTime ?? ''),
    };
    await index.putJson(key, record);
    return record;
  };
  const run = (heartbeatChains.get(key) ?? Promise.resolve()).then(write, write);
  heartbeatChains.set(key, run);
  try {
    return await run;
  } finally {
    if (heartbeatChains.get(key) === run) heartbeatChains.delete(key);
  }
}

/**
 * One row per dataset/host pair that has a snapshot or a heartbeat, sorted by dataset then
 * host. Pairs are found by skipping through snaptime/: read one key, take the newest key of
 * that pair's range, then seek past the range, so the cost is a few seeks per pair whatever
 * the number of snapshots. A pair with a heartbeat but no snapshot is "never backed up":
 * lastSnapshot is '' and it is stale.
 */
export async function repositoryStatus(repo: Repository, opts: { now: number; staleAfterMs: number }): Promise<StatusRow[]> {
  const index = repo.index;
  const latest = new Map<string, string>();
  let from = 'snaptime/';
  for (;;) {
    let first: string | undefined;
    for await (const key of index.keys('snaptime/', { gte: from, limit: 1 })) first = key;
    if (!first) break;
    const [, dataset, host] = first.split('/');
    const prefix = `snaptime/${dataset}/${host}/`;
    for await (const key of index.keys(prefix, { reverse: true, limit: 1 })) latest.set(`${dataset}/${host}`, key.slice(key.lastIndexOf('/') + 1));
    from = prefixEnd(prefix);
  }
  const beats = new Map<string, HeartbeatRecord>();
  for await (const [key, value] of index.entries('heartbeat/')) {
    beats.set(key.slice('heartbeat/'.length), JSON.parse(value.toString('utf8')) as HeartbeatRecord);
  }
  const pairs = [...new Set([...latest.keys(), ...beats.keys()])].sort((x, y) => {
    const [dx, hx] = x.split('/');
    const [dy, hy] = y.split('/');
    return dx === dy ? (hx < hy ? -1 : hx > hy ? 1 : 0) : dx < dy ? -1 : 1;
  });
  const rows: StatusRow[] = [];
  for (const pair of pairs) {
    const [dataset, host] = pair.split('/');
    const beat = beats.get(pair);
    const id = latest.get(pair);
    const snap = id ? await repo.snapshotById(id) : undefined;
    const age = snap ? (opts.now - new Date(snap.time).getTime()) / 1000 : 0;
    const lastSuccess = [snap?.time ?? '', beat?.lastSuccessTime ?? ''].sort().pop()!;
    rows.push({
      dataset,
      host,
      lastSnapshot: snap?.id ?? '',
      lastTime: snap?.time ?? '',
      ageSeconds: age,
      bytes: snap?.summary.bytes ?? '0',
      files: snap?.summary.files ?? '0',
      stale: !snap || age * 1000 > opts.staleAfterMs,
      lastError: beat?.lastError ?? '',
      lastErrorTime: beat?.lastErrorTime ?? '',
      lastSuccessTime: lastSuccess,
      unreadable: snap?.summary.errors ?? '0',
    });
  }
  return rows;
}

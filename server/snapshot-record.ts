import { CairnError, Code } from '../common/errors.js';
import { isHexId } from '../common/hash.js';
import { emptySummary, type SnapshotSummary } from '../common/messages.js';
import { validateName, type SnapshotRecord } from './repository.js';

/** Where snapshot objects live in the store: `snapshots/<id>`. */
export const SNAPSHOT_PREFIX = 'snapshots/';

export function snapshotObjectKey(id: string): string {
  return SNAPSHOT_PREFIX + id;
}

const ISO_RE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;
const UINT_RE = /^\d{1,20}$/;

function isName(v: unknown): v is string {
  if (typeof v !== 'string') return false;
  try {
    validateName('name', v);
    return true;
  } catch {
    return false;
  }
}

function isStringArray(v: unknown): v is string[] {
  return Array.isArray(v) && v.every((x) => typeof x === 'string');
}

/**
 * Parses a `snapshots/<id>` object read back from the store. Its fields end up in index keys
 * and in every client's listing, so anything but the shape the server writes is refused with
 * DATA_LOSS naming the field, rather than indexed or allowed to throw a TypeError at start.
 */
export function parseSnapshotRecord(data: Buffer, what: string): SnapshotRecord {
  let r: unknown;
  try {
    r = JSON.parse(data.toString('utf8'));
  } catch (err) {
    throw new CairnError(Code.DATA_LOSS, `${what} is not JSON (${(err as Error).message})`);
  }
  const bad = (field: string) => new CairnError(Code.DATA_LOSS, `${what} has no valid ${field}`);
  if (r === null || typeof r !== 'object' || Array.isArray(r)) throw bad('record');
  const o = r as Record<string, unknown>;
  if (o.version !== 1) throw bad('version');
  if (!isName(o.dataset)) throw bad('dataset');
  if (!isName(o.host)) throw bad('host');
  if (!isStringArray(o.paths)) throw bad('paths');
  if (!isStringArray(o.tags) || !o.tags.every(isName)) throw bad('tags');
  if (typeof o.time !== 'string' || !ISO_RE.test(o.time) || Number.isNaN(Date.parse(o.time))) throw bad('time');
  if (typeof o.parent !== 'string' || (o.parent !== '' && !isHexId(o.parent))) throw bad('parent');
  if (typeof o.rootTree !== 'string' || !isHexId(o.rootTree)) throw bad('rootTree');
  if (typeof o.clientVersion !== 'string') throw bad('clientVersion');
  if (o.summary === null || typeof o.summary !== 'object' || Array.isArray(o.summary)) throw bad('summary');
  const given = o.summary as Record<string, unknown>;
  const summary = emptySummary();
  for (const key of Object.keys(summary) as Array<keyof SnapshotSummary>) {
    const v = given[key];
    if (v === undefined) continue;
    if (key === 'durationSeconds') {
      if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw bad('summary.durationSeconds');
      summary.durationSeconds = v;
    } else {
      const s = typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? String(v) : v;
      if (typeof s !== 'string' || !UINT_RE.test(s)) throw bad(`summary.${key}`);
      summary[key] = s;
    }
  }
  return {
    version: 1,
    dataset: o.dataset,
    host: o.host,
    paths: o.paths,
    tags: o.tags,
    time: o.time,
    parent: o.parent,
    rootTree: o.rootTree,
    summary,
    clientVersion: o.clientVersion,
  };
}

import { invalidArgument } from '../common/errors.js';
import type { Policy } from '../common/admin-messages.js';
import { validateName } from './repository.js';

/** restic's calendar duration ("1y2m3d4h"); a component may be negative. */
export interface Duration {
  years: number;
  months: number;
  days: number;
  hours: number;
}

export interface RetentionPolicy {
  last: number;
  hourly: number;
  daily: number;
  weekly: number;
  monthly: number;
  yearly: number;
  within?: Duration;
  withinHourly?: Duration;
  withinDaily?: Duration;
  withinWeekly?: Duration;
  withinMonthly?: Duration;
  withinYearly?: Duration;
  /**
   * restic's --keep-tag: each entry is a tag list, "a" or "a,b"; a snapshot carrying every tag
   * of any one list is kept.
   */
  tags: string[];
}

export interface RetentionSnapshot {
  id: string;
  /** RFC 3339; buckets (hour, day, ISO week, month, year) are taken in UTC. */
  time: string;
  dataset: string;
  host: string;
  tags: string[];
  protected: boolean;
}

export interface RetentionDecision<S extends RetentionSnapshot> {
  snapshot: S;
  keep: boolean;
  reasons: string[];
}


const UNITS = [
  ['y', 'years'],
  ['m', 'months'],
  ['d', 'days'],
  ['h', 'hours'],
] as const;
const FIELD_OF_UNIT = new Map<string, keyof Duration>(UNITS);
// `u` so that a stray non-ASCII character is reported whole, not as half a surrogate pair.
const TERM = /^(-?)(\d*)(.?)/su;

/**
 * Parses restic's duration syntax: terms of an optionally negative number and a unit y, m, d or h,
 * in any order. As in restic, blank text is the zero duration and a repeated unit overrides.
 */
export function parseDuration(text: string): Duration {
  const d: Duration = { years: 0, months: 0, days: 0, hours: 0 };
  let rest = text.trim();
  while (rest !== '') {
    // Every part of TERM is optional, so it always matches.
    const [term, sign, digits, unit] = TERM.exec(rest)!;
    if (digits === '') throw badDuration(text, `expected a number at "${rest}"`);
    const magnitude = Number(digits);
    if (!Number.isSafeInteger(magnitude)) throw badDuration(text, `${digits} is too large`);
    // A literal "-0" must not leave a negative zero behind.
    const n = sign && magnitude !== 0 ? -magnitude : magnitude;
    if (unit === '') throw badDuration(text, `no unit after ${n}; use y, m, d or h`);
    const field = FIELD_OF_UNIT.get(unit);
    if (!field) throw badDuration(text, `unknown unit "${unit}" after ${n}; use y, m, d or h`);
    d[field] = n;
    rest = rest.slice(term.length);
  }
  return d;
}

const badDuration = (text: string, why: string) => invalidArgument(`invalid duration "${text}": ${why}`);

/** restic's spelling: zero components left out, so the zero duration is ''. */
export function formatDuration(d: Duration): string {
  return UNITS.filter(([, field]) => d[field] !== 0)
    .map(([unit, field]) => `${d[field]}${unit}`)
    .join('');
}

/** restic treats a zero duration as an unset one. */
const isSet = (d: Duration | undefined): d is Duration => !!d && UNITS.some(([, field]) => d[field] !== 0);

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

type Bucketer = (ms: number, nr: number) => number;

const hourOf: Bucketer = (ms) => dayOf(ms, 0) * 100 + new Date(ms).getUTCHours();
const dayOf: Bucketer = (ms) => monthOf(ms, 0) * 100 + new Date(ms).getUTCDate();
const monthOf: Bucketer = (ms) => yearOf(ms, 0) * 100 + new Date(ms).getUTCMonth() + 1;
const yearOf: Bucketer = (ms) => new Date(ms).getUTCFullYear();

/** ISO 8601 week-year and week, like Go's Time.ISOWeek: 2021-01-01 is in 2020-W53. */
const isoWeekOf: Bucketer = (ms) => {
  const t = new Date(ms);
  const mondayBased = (t.getUTCDay() + 6) % 7;
  // The Thursday of a week decides which year the week belongs to.
  const thursday = Date.UTC(t.getUTCFullYear(), t.getUTCMonth(), t.getUTCDate() - mondayBased + 3);
  const year = new Date(thursday).getUTCFullYear();
  return year * 100 + 1 + Math.floor((thursday - Date.UTC(year, 0, 1)) / (7 * DAY));
};

type CountKey = 'last' | 'hourly' | 'daily' | 'weekly' | 'monthly' | 'yearly';
type WithinKey = 'withinHourly' | 'withinDaily' | 'withinWeekly' | 'withinMonthly' | 'withinYearly';

// keep-last is a bucket rule whose every snapshot is its own bucket.
const COUNT_RULES: { key: CountKey; bucket: Bucketer; reason: string }[] = [
  { key: 'last', bucket: (_ms, nr) => nr, reason: 'last snapshot' },
  { key: 'hourly', bucket: hourOf, reason: 'hourly snapshot' },
  { key: 'daily', bucket: dayOf, reason: 'daily snapshot' },
  { key: 'weekly', bucket: isoWeekOf, reason: 'weekly snapshot' },
  { key: 'monthly', bucket: monthOf, reason: 'monthly snapshot' },
  { key: 'yearly', bucket: yearOf, reason: 'yearly snapshot' },
];

const WITHIN_RULES: { key: WithinKey; bucket: Bucketer; name: string }[] = [
  { key: 'withinHourly', bucket: hourOf, name: 'within-hourly' },
  { key: 'withinDaily', bucket: dayOf, name: 'within-daily' },
  { key: 'withinWeekly', bucket: isoWeekOf, name: 'within-weekly' },
  { key: 'withinMonthly', bucket: monthOf, name: 'within-monthly' },
  { key: 'withinYearly', bucket: yearOf, name: 'within-yearly' },
];

export function isEmptyPolicy(p: RetentionPolicy): boolean {
  return (
    COUNT_RULES.every(({ key }) => p[key] === 0) &&
    !isSet(p.within) &&
    WITHIN_RULES.every(({ key }) => !isSet(p[key])) &&
    p.tags.length === 0
  );
}

interface Entry<S> {
  snapshot: S;
  ms: number;
  nr: number;
}

/** Reasons one rule gives to keep a snapshot; rules see the group newest first and keep state. */
type Rule = (e: Entry<RetentionSnapshot>, oldest: boolean) => string[];

/**
 * Groups by dataset+host, applies the policy to each group, returns decisions for every input snapshot,
 * groups ordered by dataset then host, each group newest first (equal times: lower id first).
 * `now` only serves to leave future-dated snapshots out when finding a group's newest snapshot, as
 * restic does, so that one node with a clock running ahead cannot push every other snapshot out of a
 * keep-within window.
 */
export function applyPolicy<S extends RetentionSnapshot>(
  snapshots: S[],
  policy: RetentionPolicy,
  now: Date = new Date(),
): RetentionDecision<S>[] {
  checkCounts(policy);
  return groupsOf(snapshots).flatMap((group) => decideGroup(group, policy, now.getTime()));
}

function checkCounts(policy: RetentionPolicy): void {
  for (const { key } of COUNT_RULES) {
    const n = policy[key];
    if (!Number.isSafeInteger(n) || n < 0) {
      throw invalidArgument(`keep-${key} must be a whole number of 0 or more, not ${n}`);
    }
  }
}

const compare = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

function groupsOf<S extends RetentionSnapshot>(snapshots: S[]): S[][] {
  const groups = new Map<string, S[]>();
  for (const s of snapshots) {
    // A tuple key, so that dataset "ab" on host "c" and dataset "a" on host "bc" stay apart.
    const key = JSON.stringify([s.dataset, s.host]);
    const group = groups.get(key);
    if (group) group.push(s);
    else groups.set(key, [s]);
  }
  return [...groups.values()].sort(([a], [b]) => compare(a.dataset, b.dataset) || compare(a.host, b.host));
}

function decideGroup<S extends RetentionSnapshot>(group: S[], policy: RetentionPolicy, now: number): RetentionDecision<S>[] {
  const entries = group
    .map((snapshot) => ({ snapshot, ms: timeOf(snapshot) }))
    .sort((a, b) => b.ms - a.ms || compare(a.snapshot.id, b.snapshot.id))
    .map((e, nr) => ({ ...e, nr }));
  const rules = rulesFor(policy, newestBefore(entries, now));
  return entries.map((e) => {
    const reasons = e.snapshot.protected ? ['protected'] : [];
    // Every rule sees every snapshot: the bucket rules count even the snapshots others keep.
    for (const rule of rules) reasons.push(...rule(e, e.nr === entries.length - 1));
    return { snapshot: e.snapshot, keep: reasons.length > 0, reasons };
  });
}

function timeOf(s: RetentionSnapshot): number {
  const ms = Date.parse(s.time);
  if (Number.isNaN(ms)) throw invalidArgument(`snapshot ${s.id} has an unreadable time "${s.time}"`);
  return ms;
}

/** The newest time that is not in the future; undefined when all are, which puts every snapshot in range. */
function newestBefore(entries: Entry<unknown>[], now: number): number | undefined {
  const past = entries.filter((e) => e.ms < now);
  // A loop, not Math.max(...): a group may hold more snapshots than a call takes arguments.
  return past.length > 0 ? past.reduce((max, e) => Math.max(max, e.ms), -Infinity) : undefined;
}

function rulesFor(policy: RetentionPolicy, latest: number | undefined): Rule[] {
  if (isEmptyPolicy(policy)) return [() => ['empty policy']];
  // restic's order of reasons: tags, within, the counted buckets, the buckets within a duration.
  const within = policy.within;
  return [
    tagRule(policy.tags),
    ...(isSet(within) ? [withinRule(within, latest)] : []),
    ...COUNT_RULES.filter(({ key }) => policy[key] > 0).map(({ key, bucket, reason }) =>
      countRule(policy[key], bucket, reason),
    ),
    ...WITHIN_RULES.flatMap(({ key, bucket, name }) => {
      const d = policy[key];
      return isSet(d) ? [withinBucketRule(d, latest, bucket, name)] : [];
    }),
  ];
}

function tagRule(lists: string[]): Rule {
  const parsed = lists.map((list) => ({ list, tags: list.split(',') }));
  return (e) => parsed.filter(({ tags }) => tags.every((t) => e.snapshot.tags.includes(t))).map(({ list }) => `tag ${list}`);
}

/**
 * A --keep-tag list, checked as snapshot tags are: read as one tag, "daily,important" named a
 * tag no snapshot can carry (names hold no comma), and a stored policy of it removed every
 * snapshot of the dataset, the one just committed included.
 */
function tagList(text: string): string {
  try {
    return text.split(',').map((t) => validateName('tag', t)).join(',');
  } catch (err) {
    throw invalidArgument(`keep_tag ${JSON.stringify(text)}: ${(err as Error).message}`);
  }
}

function withinRule(d: Duration, latest: number | undefined): Rule {
  const from = pastTime(latest, d);
  const reason = `within ${formatDuration(d)}`;
  return (e) => (e.ms > from ? [reason] : []);
}

function countRule(count: number, bucket: Bucketer, reason: string): Rule {
  let left = count;
  return bucketRule(bucket, reason, () => left > 0, () => left--);
}

function withinBucketRule(d: Duration, latest: number | undefined, bucket: Bucketer, name: string): Rule {
  const from = pastTime(latest, d);
  return bucketRule(bucket, `${name} ${formatDuration(d)}`, (e) => e.ms > from);
}

/**
 * Keeps the first (newest) snapshot of each bucket it admits. While the rule still admits snapshots,
 * it also keeps the group's oldest one even in an already kept bucket, as restic ≥ 0.17 does: an
 * unfilled rule then reaches as far back in history as it can.
 */
function bucketRule(
  bucket: Bucketer,
  reason: string,
  admits: (e: Entry<RetentionSnapshot>) => boolean,
  onKeep: () => void = () => {},
): Rule {
  let last: number | undefined;
  return (e, oldest) => {
    if (!admits(e)) return [];
    const key = bucket(e.ms, e.nr);
    if (key === last && !oldest) return [];
    const why = key === last ? `oldest ${reason}` : reason;
    last = key;
    onKeep();
    return [why];
  };
}

/** restic's Duration.PastTime: calendar arithmetic in UTC, so 1m before March 31 is March 2 or 3. */
function pastTime(latest: number | undefined, d: Duration): number {
  if (latest === undefined) return -Infinity;
  const t = new Date(latest);
  // setUTCFullYear rolls overflowing months and days over like Go's AddDate, and has no 2-digit-year quirk.
  t.setUTCFullYear(t.getUTCFullYear() - d.years, t.getUTCMonth() - d.months, t.getUTCDate() - d.days);
  const ms = t.getTime() - d.hours * HOUR;
  if (!Number.isNaN(ms)) return ms;
  // Past the range of Date (±273,790 years): the window reaches past every time, or before none.
  return d.years * 8766 + d.months * 730 + d.days * 24 + d.hours > 0 ? -Infinity : Infinity;
}

export function policyFromProto(p: Partial<Policy>): RetentionPolicy {
  return {
    last: p.keepLast ?? 0,
    hourly: p.keepHourly ?? 0,
    daily: p.keepDaily ?? 0,
    weekly: p.keepWeekly ?? 0,
    monthly: p.keepMonthly ?? 0,
    yearly: p.keepYearly ?? 0,
    within: durationField('keep_within', p.keepWithin),
    withinHourly: durationField('keep_within_hourly', p.keepWithinHourly),
    withinDaily: durationField('keep_within_daily', p.keepWithinDaily),
    withinWeekly: durationField('keep_within_weekly', p.keepWithinWeekly),
    withinMonthly: durationField('keep_within_monthly', p.keepWithinMonthly),
    withinYearly: durationField('keep_within_yearly', p.keepWithinYearly),
    tags: (p.keepTags ?? []).map(tagList),
  };
}

function durationField(field: string, text: string | undefined): Duration | undefined {
  if (!text) return undefined;
  try {
    return parseDuration(text);
  } catch (err) {
    throw invalidArgument(`${field}: ${(err as Error).message}`);
  }
}

export function policyToProto(policy: RetentionPolicy, dataset = ''): Policy {
  const text = (d: Duration | undefined) => (d ? formatDuration(d) : '');
  return {
    dataset,
    keepLast: policy.last,
    keepHourly: policy.hourly,
    keepDaily: policy.daily,
    keepWeekly: policy.weekly,
    keepMonthly: policy.monthly,
    keepYearly: policy.yearly,
    keepWithin: text(policy.within),
    keepWithinHourly: text(policy.withinHourly),
    keepWithinDaily: text(policy.withinDaily),
    keepWithinWeekly: text(policy.withinWeekly),
    keepWithinMonthly: text(policy.withinMonthly),
    keepWithinYearly: text(policy.withinYearly),
    keepTags: [...policy.tags],
  };
}

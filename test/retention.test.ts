import { describe, expect, it } from 'vitest';
import { status } from '@grpc/grpc-js';
import { CairnError } from '../common/errors.js';
import {
  applyPolicy,
  formatDuration,
  isEmptyPolicy,
  parseDuration,
  policyFromProto,
  policyToProto,
  type Duration,
  type RetentionPolicy,
  type RetentionSnapshot,
} from '../server/retention.js';

// Every snapshot below is older than NOW unless a case says it is future-dated.
const NOW = new Date('2030-01-01T00:00:00Z');

const snap = (id: string, time: string, more: Partial<RetentionSnapshot> = {}): RetentionSnapshot => ({
  id,
  time,
  dataset: 'runs',
  host: 'gpu-1',
  tags: [],
  protected: false,
  ...more,
});

const policy = (p: Partial<RetentionPolicy>): RetentionPolicy => ({
  last: 0,
  hourly: 0,
  daily: 0,
  weekly: 0,
  monthly: 0,
  yearly: 0,
  tags: [],
  ...p,
});

const dur = (d: Partial<Duration>): Duration => ({ years: 0, months: 0, days: 0, hours: 0, ...d });

interface Case {
  name: string;
  policy: Partial<RetentionPolicy>;
  /** Newest first within each group; fed to applyPolicy reversed, so the order must be restored. */
  snapshots: RetentionSnapshot[];
  /** Every kept id with its exact reasons; every other id must be removed. */
  kept: Record<string, string[]>;
  /** The expected output order when it is not simply the order of `snapshots`. */
  order?: string[];
}

const CASES: Case[] = [
  {
    name: 'keep-last counts two snapshots of the same second separately, lower id first',
    policy: { last: 2 },
    snapshots: [
      snap('a', '2024-03-10T12:00:00Z'),
      snap('b', '2024-03-10T12:00:00Z'),
      snap('c', '2024-03-09T08:00:00Z'),
      snap('d', '2024-03-01T00:00:00Z'),
    ],
    // Counter filled by a and b, so d is not kept as the oldest.
    kept: { a: ['last snapshot'], b: ['last snapshot'] },
  },
  {
    name: 'a tie for the newest of a day goes to the lower id, whatever the input order',
    policy: { daily: 1 },
    snapshots: [snap('a', '2024-03-10T12:00:00Z'), snap('b', '2024-03-10T12:00:00Z'), snap('c', '2024-03-09T08:00:00Z')],
    kept: { a: ['daily snapshot'] },
  },
  {
    name: 'keep-last with fewer snapshots than asked keeps them all, the oldest as a plain last snapshot',
    policy: { last: 5 },
    snapshots: [snap('x', '2024-01-03T00:00:00Z'), snap('y', '2024-01-02T00:00:00Z'), snap('z', '2024-01-01T00:00:00Z')],
    kept: { x: ['last snapshot'], y: ['last snapshot'], z: ['last snapshot'] },
  },
  {
    name: 'keep-daily keeps the newest of each of the N most recent days that have a snapshot, across gaps',
    policy: { daily: 3 },
    snapshots: [
      snap('s1', '2024-05-20T18:00:00Z'),
      snap('s2', '2024-05-20T09:00:00Z'), // same day as s1
      snap('s3', '2024-05-17T23:59:59Z'),
      snap('s4', '2024-05-17T00:00:00Z'), // same day as s3
      snap('s5', '2024-05-10T12:00:00Z'),
      snap('s6', '2024-05-02T12:00:00Z'), // the rule is filled by s5
    ],
    kept: { s1: ['daily snapshot'], s3: ['daily snapshot'], s5: ['daily snapshot'] },
  },
  {
    name: 'an unfilled keep-daily keeps the oldest snapshot too, though its day is already kept',
    // 2024-05-20 is a Monday: o1 is in ISO week 21, o2 and o3 (Sunday) in week 20.
    policy: { daily: 7, weekly: 2 },
    snapshots: [snap('o1', '2024-05-20T18:00:00Z'), snap('o2', '2024-05-19T10:00:00Z'), snap('o3', '2024-05-19T08:00:00Z')],
    // weekly is filled by o1 and o2, so only daily still has counts left for o3.
    kept: {
      o1: ['daily snapshot', 'weekly snapshot'],
      o2: ['daily snapshot', 'weekly snapshot'],
      o3: ['oldest daily snapshot'],
    },
  },
  {
    name: 'every unfilled rule names the oldest snapshot',
    policy: { daily: 7, weekly: 3 },
    snapshots: [snap('o1', '2024-05-20T18:00:00Z'), snap('o2', '2024-05-19T10:00:00Z'), snap('o3', '2024-05-19T08:00:00Z')],
    kept: {
      o1: ['daily snapshot', 'weekly snapshot'],
      o2: ['daily snapshot', 'weekly snapshot'],
      o3: ['oldest daily snapshot', 'oldest weekly snapshot'],
    },
  },
  {
    name: 'an oldest snapshot in a bucket of its own is a plain keep, not an "oldest" one',
    policy: { daily: 7 },
    snapshots: [snap('s1', '2024-05-20T18:00:00Z'), snap('s2', '2024-05-17T00:00:00Z'), snap('s3', '2024-05-02T12:00:00Z')],
    kept: { s1: ['daily snapshot'], s2: ['daily snapshot'], s3: ['daily snapshot'] },
  },
  {
    name: 'ISO weeks: 2020-12-28 (Mon) .. 2021-01-03 (Sun) are 2020-W53; years are calendar years',
    policy: { weekly: 2, monthly: 3, yearly: 2 },
    snapshots: [
      snap('w1', '2021-01-04T00:00:00Z'), // Mon, 2021-W01
      snap('w2', '2021-01-03T23:59:59Z'), // Sun, 2020-W53
      snap('w3', '2021-01-01T12:00:00Z'), // Fri, 2020-W53, calendar year 2021
      snap('w4', '2020-12-31T12:00:00Z'), // Thu, 2020-W53, calendar year 2020
      snap('w5', '2020-12-28T00:00:00Z'), // Mon, 2020-W53
      snap('w6', '2020-12-27T23:00:00Z'), // Sun, 2020-W52
    ],
    // weekly: w1 (2021-W01), w2 (2020-W53), then filled.
    // monthly: w1 (2021-01), w4 (2020-12), one count left, so w6 is kept as the oldest of 2020-12.
    // yearly: w1 (2021), w4 (2020), then filled.
    kept: {
      w1: ['weekly snapshot', 'monthly snapshot', 'yearly snapshot'],
      w2: ['weekly snapshot'],
      w4: ['monthly snapshot', 'yearly snapshot'],
      w6: ['oldest monthly snapshot'],
    },
  },
  {
    name: 'keep-weekly reaches the ISO week before 2020-W53',
    policy: { weekly: 3 },
    snapshots: [
      snap('w1', '2021-01-04T00:00:00Z'),
      snap('w2', '2021-01-03T23:59:59Z'),
      snap('w3', '2021-01-01T12:00:00Z'),
      snap('w4', '2020-12-31T12:00:00Z'),
      snap('w5', '2020-12-28T00:00:00Z'),
      snap('w6', '2020-12-27T23:00:00Z'),
    ],
    kept: { w1: ['weekly snapshot'], w2: ['weekly snapshot'], w6: ['weekly snapshot'] },
  },
  {
    name: 'keep-hourly buckets by date and hour, so the same hour on another day is another bucket',
    policy: { hourly: 4 },
    snapshots: [
      snap('h1', '2024-02-29T23:59:59Z'),
      snap('h2', '2024-02-29T23:00:00Z'),
      snap('h3', '2024-02-29T22:59:59Z'),
      snap('h4', '2024-02-29T20:30:00Z'),
      snap('h5', '2024-02-29T20:10:00Z'),
      snap('h6', '2024-02-28T20:30:00Z'),
      snap('h7', '2024-02-28T19:00:00Z'), // the rule is filled by h6
    ],
    kept: { h1: ['hourly snapshot'], h3: ['hourly snapshot'], h4: ['hourly snapshot'], h6: ['hourly snapshot'] },
  },
  {
    name: 'days are UTC days even when a time carries an offset',
    policy: { daily: 2 },
    snapshots: [
      snap('z1', '2024-01-01T01:30:00+02:00'), // 2023-12-31T23:30Z
      snap('z2', '2023-12-31T10:00:00Z'),
      snap('z3', '2023-12-30T10:00:00Z'),
    ],
    kept: { z1: ['daily snapshot'], z3: ['daily snapshot'] },
  },
  {
    name: 'rules count independently and their reasons add up',
    policy: { last: 2, daily: 2 },
    snapshots: [
      snap('k1', '2024-04-02T10:00:00Z'),
      snap('k2', '2024-04-02T09:00:00Z'),
      snap('k3', '2024-04-01T10:00:00Z'),
      snap('k4', '2024-03-31T10:00:00Z'),
    ],
    kept: { k1: ['last snapshot', 'daily snapshot'], k2: ['last snapshot'], k3: ['daily snapshot'] },
  },
  {
    name: 'keep-within measures from the newest snapshot, not from now, and excludes the exact boundary',
    policy: { within: dur({ days: 30 }) },
    snapshots: [
      snap('n1', '2024-06-30T12:00:00Z'),
      snap('n2', '2024-06-01T12:00:01Z'),
      snap('n3', '2024-05-31T12:00:00Z'), // exactly 30 days before n1
      snap('n4', '2024-05-01T00:00:00Z'),
    ],
    kept: { n1: ['within 30d'], n2: ['within 30d'] },
  },
  {
    name: 'keep-within 1m rolls over like Go: one month before March 31 is March 2 in a leap year',
    policy: { within: dur({ months: 1 }) },
    snapshots: [
      snap('m1', '2024-03-31T10:00:00Z'),
      snap('m2', '2024-03-02T10:00:01Z'),
      snap('m3', '2024-03-02T10:00:00Z'), // the boundary
      snap('m4', '2024-02-29T12:00:00Z'), // inside if "Feb 31" were clamped to Feb 29
    ],
    kept: { m1: ['within 1m'], m2: ['within 1m'] },
  },
  {
    name: 'keep-within 1y from Feb 29 ends at March 1',
    policy: { within: dur({ years: 1 }) },
    snapshots: [
      snap('y1', '2024-02-29T00:00:00Z'),
      snap('y2', '2023-03-01T00:00:01Z'),
      snap('y3', '2023-03-01T00:00:00Z'), // the boundary
    ],
    kept: { y1: ['within 1y'], y2: ['within 1y'] },
  },
  {
    name: 'keep-within mixes calendar units and hours',
    policy: { within: dur({ days: 1, hours: 2 }) },
    snapshots: [
      snap('c1', '2024-03-31T10:00:00Z'),
      snap('c2', '2024-03-30T08:00:01Z'),
      snap('c3', '2024-03-30T08:00:00Z'), // the boundary
    ],
    kept: { c1: ['within 1d2h'], c2: ['within 1d2h'] },
  },
  {
    name: 'a duration beyond the range of dates keeps everything',
    policy: { within: dur({ years: 999_999 }) },
    snapshots: [snap('a', '2024-01-01T00:00:00Z'), snap('b', '1970-01-01T00:00:00Z')],
    kept: { a: ['within 999999y'], b: ['within 999999y'] },
  },
  {
    name: 'keep-within-daily keeps the newest of each day within the window',
    policy: { withinDaily: dur({ days: 3 }) },
    snapshots: [
      snap('d1', '2024-07-10T20:00:00Z'),
      snap('d2', '2024-07-10T08:00:00Z'), // same day as d1
      snap('d3', '2024-07-09T23:00:00Z'),
      snap('d4', '2024-07-08T01:00:00Z'),
      snap('d5', '2024-07-07T19:00:00Z'), // before the start of the window, 2024-07-07T20:00
      snap('d6', '2024-07-01T00:00:00Z'), // the oldest, but outside the window
    ],
    kept: { d1: ['within-daily 3d'], d3: ['within-daily 3d'], d4: ['within-daily 3d'] },
  },
  {
    name: 'keep-within-daily keeps the oldest snapshot too when it lies within the window',
    policy: { withinDaily: dur({ days: 7 }) },
    snapshots: [snap('e1', '2024-07-10T20:00:00Z'), snap('e2', '2024-07-09T10:00:00Z'), snap('e3', '2024-07-09T09:00:00Z')],
    kept: { e1: ['within-daily 7d'], e2: ['within-daily 7d'], e3: ['oldest within-daily 7d'] },
  },
  {
    name: 'keep-within-monthly and keep-within-yearly',
    policy: { withinMonthly: dur({ months: 3 }), withinYearly: dur({ years: 5 }) },
    snapshots: [
      snap('q1', '2024-03-15T00:00:00Z'),
      snap('q2', '2024-03-01T00:00:00Z'),
      snap('q3', '2024-02-10T00:00:00Z'),
      snap('q4', '2023-12-20T00:00:00Z'), // the 3m window starts 2023-12-15
      snap('q5', '2023-12-01T00:00:00Z'),
      snap('q6', '2022-06-01T00:00:00Z'),
      snap('q7', '2018-01-01T00:00:00Z'), // the 5y window starts 2019-03-15
    ],
    kept: {
      q1: ['within-monthly 3m', 'within-yearly 5y'],
      q3: ['within-monthly 3m'],
      q4: ['within-monthly 3m', 'within-yearly 5y'],
      q6: ['within-yearly 5y'],
    },
  },
  {
    name: 'keep-within-hourly and keep-within-weekly',
    policy: { withinHourly: dur({ hours: 3 }), withinWeekly: dur({ days: 14 }) },
    snapshots: [
      snap('r1', '2024-07-10T12:30:00Z'), // Wednesday
      snap('r2', '2024-07-10T12:10:00Z'),
      snap('r3', '2024-07-10T10:00:00Z'),
      snap('r4', '2024-07-10T09:30:00Z'), // the 3h window starts 09:30
      snap('r5', '2024-07-07T10:00:00Z'), // Sunday of the week before
      snap('r6', '2024-06-26T12:30:01Z'), // Wednesday two weeks before, 1s inside the 14d window
      snap('r7', '2024-06-26T12:30:00Z'), // the boundary, and the oldest
    ],
    kept: {
      r1: ['within-hourly 3h', 'within-weekly 14d'],
      r3: ['within-hourly 3h'],
      r5: ['within-weekly 14d'],
      r6: ['within-weekly 14d'],
    },
  },
  {
    name: 'a future-dated snapshot neither sets the newest time nor is dropped',
    policy: { last: 1, within: dur({ days: 7 }) },
    snapshots: [
      snap('f1', '2031-06-01T00:00:00Z'), // after NOW: a node whose clock runs ahead
      snap('f2', '2029-12-30T00:00:00Z'), // the newest snapshot that is not in the future
      snap('f3', '2029-12-25T00:00:00Z'),
      snap('f4', '2029-12-01T00:00:00Z'),
    ],
    kept: { f1: ['within 7d', 'last snapshot'], f2: ['within 7d'], f3: ['within 7d'] },
  },
  {
    name: 'when every snapshot is in the future, all are within',
    policy: { within: dur({ days: 1 }) },
    snapshots: [snap('g1', '2031-01-01T00:00:00Z'), snap('g2', '2030-06-01T00:00:00Z')],
    kept: { g1: ['within 1d'], g2: ['within 1d'] },
  },
  {
    name: 'keep-tag keeps a snapshot carrying any listed tag, one reason per tag, exact matches only',
    policy: { last: 1, tags: ['prod', 'keep'] },
    snapshots: [
      snap('t1', '2024-01-03T00:00:00Z'),
      snap('t2', '2024-01-02T00:00:00Z', { tags: ['prod', 'nightly'] }),
      snap('t3', '2024-01-01T00:00:00Z', { tags: ['keep', 'prod'] }),
      snap('t4', '2023-12-31T00:00:00Z', { tags: ['production'] }),
    ],
    kept: { t1: ['last snapshot'], t2: ['tag prod'], t3: ['tag prod', 'tag keep'] },
  },
  {
    name: 'a comma-separated keep-tag is a tag list: kept only with every tag of it (restic)',
    policy: { tags: ['daily,important', 'audit'] },
    snapshots: [
      snap('l1', '2024-01-04T00:00:00Z', { tags: ['daily', 'important'] }),
      snap('l2', '2024-01-03T00:00:00Z', { tags: ['important'] }),
      snap('l3', '2024-01-02T00:00:00Z', { tags: ['daily'] }),
      snap('l4', '2024-01-01T00:00:00Z', { tags: ['important', 'audit', 'daily'] }),
    ],
    kept: { l1: ['tag daily,important'], l4: ['tag daily,important', 'tag audit'] },
  },
  {
    name: 'protected snapshots are always kept and still take their place in the counts',
    policy: { last: 2, tags: ['prod'] },
    snapshots: [
      snap('p1', '2024-01-03T00:00:00Z', { protected: true }),
      snap('p2', '2024-01-02T00:00:00Z'),
      snap('p3', '2024-01-01T00:00:00Z', { protected: true, tags: ['prod'] }),
      snap('p4', '2023-12-01T00:00:00Z'),
    ],
    kept: { p1: ['protected', 'last snapshot'], p2: ['last snapshot'], p3: ['protected', 'tag prod'] },
  },
  {
    name: 'each dataset+host is its own group, groups ordered by dataset then host',
    policy: { last: 1 },
    snapshots: [
      snap('a1', '2024-01-02T00:00:00Z', { dataset: 'web', host: 'n1' }),
      snap('a2', '2024-01-01T00:00:00Z', { dataset: 'web', host: 'n1' }),
      snap('b1', '2023-01-01T00:00:00Z', { dataset: 'web', host: 'n2' }),
      snap('c1', '2024-01-03T00:00:00Z', { dataset: 'db', host: 'n1' }),
      snap('c2', '2023-06-01T00:00:00Z', { dataset: 'db', host: 'n1' }),
      // Joined without a separator both would read "abc".
      snap('j1', '2022-01-01T00:00:00Z', { dataset: 'ab', host: 'c' }),
      snap('k1', '2021-01-01T00:00:00Z', { dataset: 'a', host: 'bc' }),
    ],
    kept: {
      a1: ['last snapshot'],
      b1: ['last snapshot'],
      c1: ['last snapshot'],
      j1: ['last snapshot'],
      k1: ['last snapshot'],
    },
    order: ['k1', 'j1', 'c1', 'c2', 'a1', 'a2', 'b1'],
  },
  {
    name: 'keep-within measures from the newest snapshot of each group',
    policy: { within: dur({ days: 1 }) },
    snapshots: [
      snap('a1', '2024-01-02T00:00:00Z', { host: 'n1' }),
      snap('a2', '2024-01-01T12:00:00Z', { host: 'n1' }),
      snap('a3', '2023-12-31T00:00:00Z', { host: 'n1' }),
      snap('b1', '2020-05-05T10:00:00Z', { host: 'n2' }),
      snap('b2', '2020-05-04T11:00:00Z', { host: 'n2' }),
      snap('b3', '2020-05-04T10:00:00Z', { host: 'n2' }), // the boundary of n2's window
    ],
    kept: { a1: ['within 1d'], a2: ['within 1d'], b1: ['within 1d'], b2: ['within 1d'] },
  },
  {
    name: 'an empty policy removes nothing',
    policy: {},
    snapshots: [
      snap('e1', '2024-01-02T00:00:00Z'),
      snap('e2', '2024-01-01T00:00:00Z', { protected: true }),
      snap('e3', '2000-01-01T00:00:00Z', { tags: ['old'] }),
    ],
    kept: { e1: ['empty policy'], e2: ['protected', 'empty policy'], e3: ['empty policy'] },
  },
  {
    name: 'a policy of zero durations is empty',
    policy: { within: dur({}), withinDaily: dur({}) },
    snapshots: [snap('e1', '2024-01-02T00:00:00Z'), snap('e2', '2020-01-01T00:00:00Z')],
    kept: { e1: ['empty policy'], e2: ['empty policy'] },
  },
];

describe('applyPolicy', () => {
  it.each(CASES)('$name', (c) => {
    const decisions = applyPolicy([...c.snapshots].reverse(), policy(c.policy), NOW);

    expect(decisions.map((d) => d.snapshot.id)).toEqual(c.order ?? c.snapshots.map((s) => s.id));
    const kept = decisions.filter((d) => d.keep);
    expect(Object.fromEntries(kept.map((d) => [d.snapshot.id, d.reasons]))).toEqual(c.kept);
    for (const d of decisions.filter((d) => !d.keep)) expect(d.reasons).toEqual([]);
  });

  it('returns the caller’s own snapshot objects', () => {
    const s = { ...snap('a', '2024-01-01T00:00:00Z'), size: 42 };
    const [d] = applyPolicy([s], policy({ last: 1 }), NOW);
    expect(d?.snapshot).toBe(s);
  });

  it('decides for a group of 130,000 snapshots, more than a call takes arguments', () => {
    const start = Date.parse('2020-01-01T00:00:00Z');
    const many = Array.from({ length: 130_000 }, (_, i) => snap(`s${i}`, new Date(start + i * 60_000).toISOString()));
    const decisions = applyPolicy(many.reverse(), policy({ last: 2, within: dur({ hours: 1 }) }), NOW);
    // The hour before the newest, a minute apart (the newest two among them).
    expect(decisions.filter((d) => d.keep)).toHaveLength(60);
  });

  it('returns nothing for no snapshots', () => {
    expect(applyPolicy([], policy({ last: 1 }), NOW)).toEqual([]);
  });

  it('leaves out future-dated snapshots by the real clock when no time is given', () => {
    const decisions = applyPolicy(
      [snap('future', '9999-01-01T00:00:00Z'), snap('a', '2000-01-02T00:00:00Z'), snap('b', '2000-01-01T00:00:00Z')],
      policy({ within: dur({ hours: 1 }) }),
    );
    expect(decisions.filter((d) => d.keep).map((d) => d.snapshot.id)).toEqual(['future', 'a']);
  });

  it('rejects an unreadable time, naming the snapshot', () => {
    expectInvalid(() => applyPolicy([snap('bad1', 'yesterday')], policy({ last: 1 }), NOW), /bad1.*"yesterday"/);
  });

  it.each([-1, 1.5, Number.NaN])('rejects a count of %s', (n) => {
    expectInvalid(() => applyPolicy([], policy({ daily: n }), NOW), /keep-daily/);
  });
});

describe('parseDuration', () => {
  it.each<[string, Partial<Duration>]>([
    ['30d', { days: 30 }],
    ['48h', { hours: 48 }],
    ['1y2m3d4h', { years: 1, months: 2, days: 3, hours: 4 }],
    ['4h3d2m1y', { years: 1, months: 2, days: 3, hours: 4 }],
    ['  2m ', { months: 2 }],
    ['1d-2h', { days: 1, hours: -2 }],
    ['-1y', { years: -1 }],
    ['007d', { days: 7 }],
    ['0d', {}],
    ['-0d', {}],
    ['', {}],
    ['1d2d', { days: 2 }], // as in restic, a repeated unit overrides
  ])('%j', (text, want) => {
    expect(parseDuration(text)).toEqual(dur(want));
  });

  it.each<[string, RegExp]>([
    ['d', /expected a number at "d"/],
    ['-', /expected a number/],
    ['--1d', /expected a number at "--1d"/],
    ['+1d', /expected a number/],
    ['1d d', /expected a number at " d"/],
    ['5', /no unit after 5/],
    ['1d5', /no unit after 5/],
    ['5x', /unknown unit "x" after 5/],
    ['5D', /unknown unit "D"/],
    ['1.5d', /unknown unit "\." after 1/],
    ['1 d', /unknown unit " " after 1/],
    ['3w', /unknown unit "w"/],
    ['5😀', /unknown unit "😀"/],
    ['٣d', /expected a number/],
    ['99999999999999999999y', /too large/],
  ])('rejects %j', (text, why) => {
    const err = expectInvalid(() => parseDuration(text), why);
    expect(err.message).toContain(`"${text}"`);
  });
});

describe('formatDuration', () => {
  it.each<[Partial<Duration>, string]>([
    [{ years: 1, months: 2, days: 3, hours: 4 }, '1y2m3d4h'],
    [{ days: 30 }, '30d'],
    [{ days: -1, hours: 5 }, '-1d5h'],
    [{}, ''],
  ])('%j is %j', (d, text) => {
    expect(formatDuration(dur(d))).toBe(text);
    expect(parseDuration(text)).toEqual(dur(d));
  });
});

describe('isEmptyPolicy', () => {
  it.each<[Partial<RetentionPolicy>, boolean]>([
    [{}, true],
    [{ within: dur({}) }, true],
    [{ yearly: 1 }, false],
    [{ within: dur({ hours: 1 }) }, false],
    [{ withinYearly: dur({ years: -1 }) }, false],
    [{ tags: ['prod'] }, false],
  ])('%j → %s', (p, empty) => {
    expect(isEmptyPolicy(policy(p))).toBe(empty);
  });
});

describe('policy records', () => {
  const proto = {
    dataset: 'runs',
    keepLast: 3,
    keepHourly: 24,
    keepDaily: 7,
    keepWeekly: 4,
    keepMonthly: 12,
    keepYearly: 2,
    keepWithin: '1y2m',
    keepWithinHourly: '48h',
    keepWithinDaily: '',
    keepWithinWeekly: '',
    keepWithinMonthly: '',
    keepWithinYearly: '10y',
    keepTags: ['prod'],
  };

  it('converts from the proto, with "" as unset', () => {
    expect(policyFromProto(proto)).toEqual({
      last: 3,
      hourly: 24,
      daily: 7,
      weekly: 4,
      monthly: 12,
      yearly: 2,
      within: dur({ years: 1, months: 2 }),
      withinHourly: dur({ hours: 48 }),
      withinDaily: undefined,
      withinWeekly: undefined,
      withinMonthly: undefined,
      withinYearly: dur({ years: 10 }),
      tags: ['prod'],
    });
  });

  it('round-trips', () => {
    expect(policyToProto(policyFromProto(proto), 'runs')).toEqual(proto);
  });

  it('reads a message with fields left out as the empty policy', () => {
    const p = policyFromProto({});
    expect(isEmptyPolicy(p)).toBe(true);
    expect(policyToProto(p)).toEqual({
      ...proto,
      dataset: '',
      keepLast: 0,
      keepHourly: 0,
      keepDaily: 0,
      keepWeekly: 0,
      keepMonthly: 0,
      keepYearly: 0,
      keepWithin: '',
      keepWithinHourly: '',
      keepWithinYearly: '',
      keepTags: [],
    });
  });

  it('refuses a keep-tag no snapshot could carry, naming it', () => {
    expectInvalid(() => policyFromProto({ keepTags: ['prod', 'daily,'] }), /^keep_tag "daily,": tag "" is not valid/);
    expectInvalid(() => policyFromProto({ keepTags: ['daily, important'] }), /^keep_tag "daily, important": tag " important" is not valid/);
    expectInvalid(() => policyFromProto({ keepTags: ['a,,b'] }), /^keep_tag "a,,b": tag "" is not valid/);
    expectInvalid(() => policyFromProto({ keepTags: [''] }), /^keep_tag "": tag "" is not valid/);
    expect(policyFromProto({ keepTags: ['daily,important'] }).tags).toEqual(['daily,important']);
  });

  it('names the field and the text of a bad duration', () => {
    expectInvalid(() => policyFromProto({ keepWithinDaily: '7 days' }), /keep_within_daily: invalid duration "7 days"/);
  });
});

function expectInvalid(fn: () => unknown, message: RegExp): CairnError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(CairnError);
  const err = caught as CairnError;
  expect(err.code).toBe(status.INVALID_ARGUMENT);
  expect(err.message).toMatch(message);
  return err;
}

import { invalidArgument } from './errors.js';

const UNIT_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 7 * 86_400_000 };

/**
 * Milliseconds in an elapsed-time duration: "30m", "26h", "7d", "2w", "90s", or terms joined
 * as in "1d12h". Not server/retention.ts's parseDuration: that one is restic's calendar
 * syntax, where "m" means months, and client code may not import server code; here "m" is
 * minutes, because "--stale-after 30m" and "--since 30m" are how people write freshness.
 */
export function parseDurationMs(text: string): number {
  const s = text.trim();
  const bad = (why: string) => invalidArgument(`invalid duration "${text}": ${why}`);
  if (s === '') throw bad('empty; use a number and a unit s, m, h, d or w, such as 26h or 7d');
  const term = /(\d+(?:\.\d+)?)([a-z]+)/gy;
  let ms = 0;
  let end = 0;
  for (let m = term.exec(s); m; m = term.exec(s)) {
    const unit = UNIT_MS[m[2]];
    if (unit === undefined) throw bad(`unknown unit "${m[2]}"; use s, m, h, d or w`);
    ms += Number(m[1]) * unit;
    end = term.lastIndex;
  }
  if (end !== s.length) throw bad(`expected a number and a unit s, m, h, d or w at "${s.slice(end)}"`);
  if (!Number.isSafeInteger(Math.round(ms))) throw bad('too large');
  return Math.round(ms);
}

export function isDuration(text: string): boolean {
  return /^(\d+(?:\.\d+)?[smhdw])+$/.test(text.trim());
}

/**
 * An RFC 3339 UTC time from what a user typed for --since/--until: a duration counts back
 * from `now` ("7d" = seven days ago), otherwise a date ("2026-11-01", UTC midnight) or an
 * RFC 3339 time.
 */
export function parseTimeArg(text: string, what: string, now = Date.now()): string {
  if (isDuration(text)) return new Date(now - parseDurationMs(text)).toISOString();
  const trimmed = text.trim();
  const iso = /^\d{4}-\d{2}-\d{2}$/.test(trimmed) ? `${trimmed}T00:00:00Z` : trimmed;
  try {
    const t = wireTime(iso, what);
    if (t) return t;
  } catch {
    // Named below, with every form this option takes.
  }
  throw invalidArgument(`${what} ${JSON.stringify(text)} is neither a duration (7d, 26h, 30m, 2w) nor a date or RFC 3339 time (2026-11-01, 2026-11-01T12:00:00Z)`);
}

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

/**
 * A time field of a request, normalised to RFC 3339 UTC; undefined when empty. Strict, as
 * clients convert what users type before sending: Date() alone reads "1" as 2001, and a year
 * outside 0000-9999 prints with a sign that would sort before every real snapshot key.
 */
export function wireTime(value: string, field: string): string | undefined {
  if (!value) return undefined;
  const m = RFC3339.exec(value);
  let t = new Date(NaN);
  if (m) {
    const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
    // Date() rolls 02-30 over to 03-02 and 24:00 to the next day: the fields must be real.
    // A leap second (:60) is the next second's first instant, as POSIX counts it.
    const real = month >= 1 && month <= 12 && day >= 1 && day <= new Date(Date.UTC(year, month, 0)).getUTCDate() && hour <= 23 && minute <= 59 && second <= 60;
    if (real) t = new Date(Date.parse(value.replace(/:60(?=[.Zz+-])/, ':59')) + (second === 60 ? 1000 : 0));
  }
  if (Number.isNaN(t.getTime()) || t.getUTCFullYear() < 0 || t.getUTCFullYear() > 9999) {
    throw invalidArgument(`${field} ${JSON.stringify(value)} is not an RFC 3339 time such as 2026-11-01T12:00:00Z`);
  }
  return t.toISOString();
}

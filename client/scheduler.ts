import { CronExpressionParser } from 'cron-parser';
import { invalidArgument } from '../common/errors.js';

export type Schedule = { every: number } | { cron: string };

/** Checks a cron expression now, so a typo is a config error and not a silent daemon. */
export function parseCron(expr: string, what: string): string {
  try {
    CronExpressionParser.parse(expr);
  } catch (err) {
    throw invalidArgument(`${what} ${JSON.stringify(expr)} is not a cron expression (${(err as Error).message}); use five fields, such as "0 * * * *" for every hour`);
  }
  return expr;
}

/**
 * When a dataset's next run is due. `every` runs at once when the agent starts, then at a
 * fixed rate from each start; cron runs at the next matching time (local time zone) after
 * the last start, or after now for the first run. A time in the past means "now": a run that
 * overran its slot is followed by one run, never by one per missed slot.
 */
export function nextDue(schedule: Schedule, lastStart: number | undefined, now: number): number {
  if ('every' in schedule) return lastStart === undefined ? now : lastStart + schedule.every;
  return CronExpressionParser.parse(schedule.cron, { currentDate: new Date(lastStart ?? now) })
    .next()
    .getTime();
}

export function describeSchedule(schedule: Schedule): string {
  return 'every' in schedule ? `every ${schedule.every / 1000}s` : `cron "${schedule.cron}"`;
}

/**
 * Exponential backoff with jitter: the n-th retry (from 1) waits between half and all of
 * initial * 2^(n-1), capped at max, so agents that failed together do not retry together.
 */
export function backoffMs(retry: number, initialMs: number, maxMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(maxMs, initialMs * 2 ** (retry - 1));
  return Math.round(ceiling * (0.5 + random() / 2));
}

/** Waits until `clock()` reaches `due` (wall clock by default) or the signal; false when the signal came first. */
export async function sleepUntil(due: number, signal: AbortSignal, clock: () => number = Date.now): Promise<boolean> {
  // Short slices: setTimeout cannot wait more than ~24 days, and a clock that jumps (a
  // suspended VM, an NTP step) is noticed within the slice.
  const SLICE_MS = 60_000;
  while (!signal.aborted && clock() < due) {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, Math.min(due - clock(), SLICE_MS));
      signal.addEventListener('abort', done, { once: true });
      function done() {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        resolve();
      }
    });
  }
  return !signal.aborted;
}

/** At most `n` holders at a time; a waiter gives up when the signal fires. */
export class Semaphore {
  private held = 0;
  private readonly waiters: Array<() => void> = [];

  constructor(private readonly n: number) {}

  async acquire(signal: AbortSignal): Promise<boolean> {
    while (this.held >= this.n) {
      if (signal.aborted) return false;
      await new Promise<void>((resolve) => {
        const wake = () => {
          signal.removeEventListener('abort', wake);
          resolve();
        };
        this.waiters.push(wake);
        signal.addEventListener('abort', wake, { once: true });
      });
    }
    if (signal.aborted) return false;
    this.held++;
    return true;
  }

  release(): void {
    this.held--;
    // Everyone re-checks: simpler than handing the slot over, and a waiter that gave up is skipped for free.
    for (const wake of this.waiters.splice(0)) wake();
  }
}

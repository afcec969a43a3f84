import type { StepMeasure } from './tools.js';

export const STEPS = ['first', 'nochange', 'changed', 'restore'] as const;
export type Step = (typeof STEPS)[number];
export const STEP_LABEL: Record<Step, string> = { first: 'first snapshot', nochange: 'no-change snapshot', changed: 'day-of-changes snapshot', restore: 'restore latest' };

export interface StepResult extends StepMeasure {
  /** Dataset (or restored) bytes per second, MB = 10^6 bytes. */
  mbps: number;
  bytes: number;
}

export interface ToolResult {
  name: string;
  available: boolean;
  reason?: string;
  notes: string[];
  steps: Partial<Record<Step, StepResult>>;
  cacheBytes?: number;
  verified?: { files: number; bytes: number };
}

/**
 * One result per tool from several rounds of the same comparison: for each step, the round
 * whose wall time is the median (the lower middle for an even count), taken whole, so its CPU,
 * RSS and repository size are what that one run measured rather than medians from different
 * runs. On a shared machine a single run's ratio moved by a third between runs of the same
 * code; the median of three is steadier. A tool missing from any round is reported missing.
 */
export function medianOfRounds(rounds: ToolResult[][]): ToolResult[] {
  if (rounds.length === 0) return [];
  return rounds[0].map((first) => {
    const mine = rounds.map((round) => round.find((r) => r.name === first.name));
    const missing = mine.find((r) => !r || !r.available);
    if (missing) return { ...first, available: false, reason: missing.reason ?? `${first.name} was not run in every round`, steps: {} };
    const runs = mine as ToolResult[];
    const steps: ToolResult['steps'] = {};
    for (const s of STEPS) {
      const measured = runs.map((r) => r.steps[s]).filter((m): m is StepResult => m !== undefined);
      if (measured.length === 0) continue;
      measured.sort((a, b) => a.seconds - b.seconds);
      steps[s] = measured[Math.floor((measured.length - 1) / 2)];
    }
    const last = runs[runs.length - 1];
    return { ...last, steps };
  });
}

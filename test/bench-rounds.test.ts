import { describe, expect, it } from 'vitest';
import { medianOfRounds, type StepResult, type ToolResult } from '../bench/results.js';

const measure = (seconds: number, cpuSeconds: number, peakRss: number): StepResult => ({ seconds, cpuSeconds, systemSeconds: cpuSeconds / 4, peakRss, repoBytes: 1000, processes: {}, bytes: 1e9, mbps: 1e3 / seconds });
const tool = (name: string, first: StepResult, restore?: StepResult): ToolResult => ({ name, available: true, notes: [], steps: { first, ...(restore ? { restore } : {}) } });

describe('bench --rounds: the median round of each step', () => {
  it('takes, per tool and step, the whole measurement of the round with the median wall time', () => {
    const rounds = [
      [tool('cairn', measure(7.0, 11, 500), measure(5.9, 9, 480)), tool('restic', measure(6.4, 10, 140))],
      [tool('cairn', measure(6.2, 10, 560), measure(4.2, 6, 470)), tool('restic', measure(7.4, 12, 150))],
      [tool('cairn', measure(6.5, 12, 540), measure(5.6, 8, 490)), tool('restic', measure(6.9, 11, 145))],
    ];
    const [cairn, restic] = medianOfRounds(rounds);
    // 6.2 / 6.5 / 7.0: the 6.5 s round, with its own CPU and RSS, not medians of different rounds.
    expect(cairn.steps.first).toMatchObject({ seconds: 6.5, cpuSeconds: 12, peakRss: 540 });
    expect(cairn.steps.restore).toMatchObject({ seconds: 5.6, cpuSeconds: 8, peakRss: 490 });
    expect(restic.steps.first).toMatchObject({ seconds: 6.9, cpuSeconds: 11, peakRss: 145 });
    expect(restic.steps.restore).toBeUndefined();
  });

  it('takes the lower middle of an even count, and a single round as it is', () => {
    const two = medianOfRounds([[tool('borg', measure(6.8, 6, 80))], [tool('borg', measure(6.2, 6, 79))]]);
    expect(two[0].steps.first?.seconds).toBe(6.2);
    const one = [[tool('borg', measure(6.5, 6, 80))]];
    expect(medianOfRounds(one)[0].steps.first?.seconds).toBe(6.5);
  });

  it('reports a tool that was unavailable in any round as unavailable, with the reason', () => {
    const down: ToolResult = { name: 'cairn-s3', available: false, reason: 's3rver did not start', notes: [], steps: {} };
    const [s3] = medianOfRounds([[tool('cairn-s3', measure(10, 13, 550))], [down], [tool('cairn-s3', measure(11, 13, 560))]]);
    expect(s3.available).toBe(false);
    expect(s3.reason).toBe('s3rver did not start');
    expect(s3.steps).toEqual({});
  });
});

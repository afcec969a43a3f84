import { describe, expect, it } from 'vitest';
import { chooseWorker, workerLimit } from '../client/worker-choice.js';

describe('chooseWorker', () => {
  const pool = (load: number[], max: number) => {
    let spawned = 0;
    const i = chooseWorker(load, max, () => {
      spawned++;
      load.push(0);
      return load.length - 1;
    });
    return { i, spawned };
  };

  it('starts the first worker on the first job, and another only while all are busy', () => {
    expect(pool([], 2)).toEqual({ i: 0, spawned: 1 });
    expect(pool([0], 2)).toEqual({ i: 0, spawned: 0 });
    expect(pool([1], 2)).toEqual({ i: 1, spawned: 1 });
  });

  it('gives the job to the least loaded worker once the pool is full', () => {
    expect(pool([3, 1], 2)).toEqual({ i: 1, spawned: 0 });
    expect(pool([2, 2, 1], 3)).toEqual({ i: 2, spawned: 0 });
  });
});

describe('workerLimit', () => {
  it('leaves one core to the main thread, starts at least one worker, and never more than the pool allows', () => {
    expect(workerLimit(4, 1)).toBe(1);
    expect(workerLimit(4, 2)).toBe(1);
    expect(workerLimit(4, 3)).toBe(2);
    expect(workerLimit(4, 16)).toBe(4);
    expect(workerLimit(2, 16)).toBe(2);
  });
});

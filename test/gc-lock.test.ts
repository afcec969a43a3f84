import { describe, expect, it } from 'vitest';
import { CairnError } from '../common/errors.js';
import { exclusiveMaintenance, GcLock, Mutex } from '../server/gc-lock.js';

const tick = () => new Promise((r) => setImmediate(r));

function gate(): { wait: Promise<void>; open: () => void } {
  let open!: () => void;
  const wait = new Promise<void>((r) => (open = r));
  return { wait, open };
}

describe('GcLock', () => {
  it('lets shared holders overlap, makes exclusive wait for them, and new shared holders wait behind a waiting exclusive', async () => {
    const lock = new GcLock();
    const log: string[] = [];
    const a = gate();
    const b = gate();
    const first = lock.shared(async () => (log.push('shared 1 in'), await a.wait, log.push('shared 1 out')));
    const second = lock.shared(async () => (log.push('shared 2 in'), await b.wait, log.push('shared 2 out')));
    await tick();
    expect(log).toEqual(['shared 1 in', 'shared 2 in']);
    const excl = lock.exclusive(async () => void log.push('exclusive'));
    const late = lock.shared(async () => void log.push('late shared'));
    a.open();
    await first;
    await tick();
    // One shared holder is still inside: the exclusive one waits, and so does the late reader behind it.
    expect(log).toEqual(['shared 1 in', 'shared 2 in', 'shared 1 out']);
    b.open();
    await Promise.all([second, excl, late]);
    expect(log).toEqual(['shared 1 in', 'shared 2 in', 'shared 1 out', 'shared 2 out', 'exclusive', 'late shared']);
  });

  it('releases on failure', async () => {
    const lock = new GcLock();
    await expect(lock.exclusive(async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    await expect(lock.shared(async () => 1)).resolves.toBe(1);
  });
});

describe('Mutex and exclusiveMaintenance', () => {
  it('runs turns in order, and refuses a second maintenance run on the same repository with a message naming the first', async () => {
    const m = new Mutex();
    const order: number[] = [];
    await Promise.all([1, 2, 3].map((n) => m.run(async () => (await tick(), order.push(n)))));
    expect(order).toEqual([1, 2, 3]);

    const repo = { name: 'default' };
    const g = gate();
    const running = exclusiveMaintenance(repo, 'prune', () => g.wait);
    const refused = exclusiveMaintenance(repo, 'check', async () => 'ran');
    await expect(refused).rejects.toBeInstanceOf(CairnError);
    await expect(refused).rejects.toThrow('prune is running on repository default; run check when it has finished');
    g.open();
    await running;
    await expect(exclusiveMaintenance(repo, 'check', async () => 'ran')).resolves.toBe('ran');
  });
});

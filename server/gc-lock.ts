import { failedPrecondition } from '../common/errors.js';

/**
 * The readers-writer lock between backups and garbage collection. FindMissing and Upload hold
 * it shared from the moment they look a blob up to the moment they have pinned it, so "present"
 * and the pin are one step as far as prune is concerned; prune holds it exclusive while it
 * re-reads the pins and unindexes the blobs it condemned (see prune.ts). Backups never wait for
 * each other. A waiting exclusive holder makes new shared holders wait, so a busy server cannot
 * starve a prune.
 */
export class GcLock {
  private readers = 0;
  private writer = false;
  private writersWaiting = 0;
  private waiters: Array<() => void> = [];

  async shared<T>(fn: () => Promise<T>): Promise<T> {
    while (this.writer || this.writersWaiting > 0) await this.wait();
    this.readers++;
    try {
      return await fn();
    } finally {
      this.readers--;
      this.wake();
    }
  }

  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    this.writersWaiting++;
    try {
      while (this.writer || this.readers > 0) await this.wait();
    } finally {
      this.writersWaiting--;
    }
    this.writer = true;
    try {
      return await fn();
    } finally {
      this.writer = false;
      this.wake();
    }
  }

  private wait(): Promise<void> {
    return new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
}

/** A mutex whose waiters queue in order: forget, protect and policy changes of one repository take turns. */
export class Mutex {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.tail.then(fn, fn);
    this.tail = result.catch(() => undefined);
    return result;
  }
}

const running = new WeakMap<object, string>();

/**
 * Prune and check of one repository refuse to overlap: check would report the packs a running
 * prune is deleting as missing, and two prunes would each delete what the other repacked into.
 */
export async function exclusiveMaintenance<T>(repo: { name: string }, what: string, fn: () => Promise<T>): Promise<T> {
  const other = running.get(repo);
  if (other) throw failedPrecondition(`${other} is running on repository ${repo.name}; run ${what} when it has finished`);
  running.set(repo, what);
  try {
    return await fn();
  } finally {
    running.delete(repo);
  }
}

import { promises as fs } from 'node:fs';

interface Entry {
  opening: Promise<fs.FileHandle>;
  users: number;
  idleSince: number;
  /** Deleted or replaced under this path: closed once its last reader is done, never lent again. */
  retired: boolean;
}

/**
 * Read-only handles of recently read files, kept open across a burst of ranged reads: a
 * restore reads hundreds of ranges from each pack, and opening and closing the pack for every
 * one cost more than the reads. At most `max` handles stay open while unused, and none longer
 * than `idleMs`. The owner calls retire() before it deletes or replaces a file, so a handle
 * on the old inode never serves a read of a file later written under that path.
 */
export class OpenFiles {
  private readonly entries = new Map<string, Entry>();
  private sweeper: NodeJS.Timeout | undefined;

  constructor(
    private readonly max = 32,
    private readonly idleMs = 2000,
  ) {}

  async use<T>(file: string, read: (fh: fs.FileHandle) => Promise<T>): Promise<T> {
    let e = this.entries.get(file);
    if (e) {
      // Map order is the LRU order: the last used goes to the end.
      this.entries.delete(file);
    } else {
      e = { opening: fs.open(file, 'r'), users: 0, idleSince: 0, retired: false };
      const opened = e;
      // A failed open is not kept: the next read tries again (and reports its own error).
      e.opening.catch(() => this.drop(file, opened));
    }
    this.entries.set(file, e);
    e.users++;
    try {
      return await read(await e.opening);
    } finally {
      e.users--;
      if (e.users === 0) this.idle(e);
      this.trim();
    }
  }

  /** Stops lending the handle of `file`; the next use opens the file afresh. */
  retire(file: string): void {
    const e = this.entries.get(file);
    if (e) this.drop(file, e);
  }

  async close(): Promise<void> {
    clearTimeout(this.sweeper);
    this.sweeper = undefined;
    for (const file of [...this.entries.keys()]) this.retire(file);
  }

  private drop(file: string, e: Entry): void {
    if (this.entries.get(file) === e) this.entries.delete(file);
    e.retired = true;
    if (e.users === 0) closeQuietly(e);
  }

  private idle(e: Entry): void {
    if (e.retired) {
      closeQuietly(e);
      return;
    }
    e.idleSince = Date.now();
    this.sweeper ??= setTimeout(() => this.sweep(), this.idleMs).unref();
  }

  private trim(): void {
    let excess = this.entries.size - this.max;
    for (const [file, e] of this.entries) {
      if (excess <= 0) break;
      if (e.users > 0) continue;
      this.drop(file, e);
      excess--;
    }
  }

  private sweep(): void {
    this.sweeper = undefined;
    const now = Date.now();
    let waiting = false;
    for (const [file, e] of this.entries) {
      if (e.users > 0) continue;
      if (now - e.idleSince >= this.idleMs) this.drop(file, e);
      else waiting = true;
    }
    if (waiting) this.sweeper = setTimeout(() => this.sweep(), this.idleMs).unref();
  }
}

function closeQuietly(e: Entry): void {
  e.opening.then(
    (fh) => fh.close(),
    () => undefined,
  ).catch(() => undefined);
}

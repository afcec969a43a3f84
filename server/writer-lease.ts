import { randomBytes } from 'node:crypto';
import { readFileSync, readlinkSync } from 'node:fs';
import os from 'node:os';
import type { Logger } from 'pino';
import { CairnError, Code, failedPrecondition, invalidArgument } from '../common/errors.js';
import type { ObjectStore } from './object-store.js';

export const LEASE_KEY = 'locks/writer';
const MAX_TTL_MS = 24 * 60 * 60_000;

interface LeaseRecord {
  holder: string;
  host: string;
  pid: number;
  /** This boot of this kernel and this process-id namespace: where `pid` means a process. */
  machine?: string;
  expires: string;
}

/**
 * Host names repeat (cloned images, containers sharing one), and a pid means a process only
 * within one boot and one pid namespace: both must match before a missing pid says the
 * holder is gone.
 */
function machineIdentity(): string | undefined {
  try {
    return `${readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()} ${readlinkSync('/proc/self/ns/pid')}`;
  } catch {
    return undefined;
  }
}

/**
 * One writer per repository. The lease is an object under locks/ written with the store's
 * conditional put (If-None-Match: * on S3, link(2) on the folder store) and refreshed well
 * before it expires. A lease past its expiry, or held by a process on this machine (same
 * host name, boot and pid namespace) that no longer exists, belongs to a writer that is gone: it is deleted and raced for again, and each refresh reads the object back, so a writer that
 * lost its lease finds out within one refresh and stops instead of writing beside another.
 */
export class WriterLease {
  private readonly me: LeaseRecord;
  private timer: NodeJS.Timeout | undefined;
  /** Fires shortly before the last lease this writer wrote expires, unless a refresh came first. */
  private fence: NodeJS.Timeout | undefined;
  private refreshing: Promise<void> = Promise.resolve();
  private released = false;
  private lost = false;

  constructor(
    private readonly store: ObjectStore,
    private readonly ttlMs: number,
    private readonly log: Logger,
    private readonly onLost: (err: CairnError) => void,
  ) {
    // Node's timers cannot wait longer than ~24.8 days: a longer one fires at once.
    if (!(ttlMs >= 1000 && ttlMs <= MAX_TTL_MS)) throw invalidArgument(`--lease-ttl must be from 1s to 1d, got ${ttlMs / 1000}s`);
    this.me = { holder: randomBytes(8).toString('hex'), host: os.hostname(), pid: process.pid, machine: machineIdentity(), expires: '' };
  }

  private record(): Buffer {
    this.me.expires = new Date(Date.now() + this.ttlMs).toISOString();
    return Buffer.from(JSON.stringify(this.me));
  }

  /**
   * After each lease written: a writer whose refreshes keep failing (a store outage, a network
   * partition) must stop before its lease runs out, or a second server could take the lease
   * and write beside it while it goes on. Its expiry was set before the write, so it is early.
   */
  private armFence(): void {
    clearTimeout(this.fence);
    const expires = this.me.expires;
    const margin = Math.min(this.ttlMs / 6, 10_000);
    this.fence = setTimeout(
      () => this.lose(failedPrecondition(`could not refresh the writer lease of ${this.store.description} before it expires at ${expires}; stopping writes, so that another writer may take over safely`)),
      Math.max(0, Date.parse(expires) - margin - Date.now()),
    ).unref();
  }

  private lose(err: CairnError): void {
    if (this.released || this.lost) return;
    this.lost = true;
    clearInterval(this.timer);
    clearTimeout(this.fence);
    this.onLost(err);
  }

  /**
   * The lease as stored. One that is not a lease record (a put cut short on a store that does
   * not write objects whole, as the s3rver test stand-in does when its writer is killed) proves
   * no live holder: it reads as expired and is taken over like a stale one. A live writer
   * whose lease it was finds it no longer its own at its next refresh and stops.
   */
  private async current(): Promise<LeaseRecord | undefined> {
    let data: Buffer;
    try {
      data = await this.store.get(LEASE_KEY);
    } catch (err) {
      if (err instanceof CairnError && err.code === Code.NOT_FOUND) return undefined;
      throw err;
    }
    try {
      const r = JSON.parse(data.toString('utf8')) as LeaseRecord;
      if (typeof r.holder === 'string' && typeof r.expires === 'string' && !Number.isNaN(Date.parse(r.expires))) return r;
    } catch {
      // Not JSON: as below.
    }
    return { holder: `unreadable (${data.length} bytes)`, host: 'unknown', pid: 0, expires: new Date(0).toISOString() };
  }

  async acquire(): Promise<void> {
    for (let attempt = 0; attempt < 3; attempt++) {
      if (await this.store.putIfAbsent(LEASE_KEY, this.record())) {
        this.armFence();
        this.timer = setInterval(() => {
          this.refreshing = this.refreshing.then(() => this.refresh());
        }, Math.max(500, this.ttlMs / 3)).unref();
        this.log.info({ holder: this.me.holder, ttlMs: this.ttlMs }, 'writer lease acquired');
        return;
      }
      const other = await this.current();
      if (!other) continue;
      if (new Date(other.expires).getTime() > Date.now() && !this.deadOnThisHost(other)) {
        throw failedPrecondition(
          `repository ${this.store.description} is held by another writer: ${other.host} pid ${other.pid} (lease ${other.holder}, expires ${other.expires}); stop it, or wait for its lease to expire if it is gone`,
        );
      }
      // Another server may be taking over the same stale lease: delete only what was judged
      // stale, not the lease that server may have just written in its place. (A store has no
      // conditional delete, so two takers can still cross in the moment between the two reads;
      // the loser finds out at its first refresh.)
      const again = await this.current();
      if (again?.holder !== other.holder || again.expires !== other.expires) continue;
      this.log.warn({ stale: other }, 'taking over the writer lease of a writer that is gone');
      await this.store.delete([LEASE_KEY]);
    }
    throw failedPrecondition(`could not acquire the writer lease of ${this.store.description}: another writer keeps taking it`);
  }

  /** A holder on this machine whose process no longer exists (a kill -9 and restart) need not be waited for. */
  private deadOnThisHost(other: LeaseRecord): boolean {
    if (other.host !== this.me.host || other.machine === undefined || other.machine !== this.me.machine || other.pid === process.pid) return false;
    try {
      process.kill(other.pid, 0);
      return false;
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'ESRCH';
    }
  }

  private async refresh(): Promise<void> {
    if (this.released || this.lost) return;
    try {
      const cur = await this.current();
      if (cur?.holder !== this.me.holder) {
        this.lose(failedPrecondition(`writer lease of ${this.store.description} was taken by ${cur ? `${cur.host} pid ${cur.pid}` : 'nobody (deleted)'}; stopping writes`));
        return;
      }
      await this.store.put(LEASE_KEY, this.record());
      this.armFence();
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'writer lease refresh failed; retrying');
    }
  }

  async release(): Promise<void> {
    clearInterval(this.timer);
    clearTimeout(this.fence);
    this.released = true;
    // A refresh already on its way would write the lease back after we delete it.
    await this.refreshing;
    const cur = await this.current().catch(() => undefined);
    if (cur?.holder === this.me.holder) await this.store.delete([LEASE_KEY]);
  }
}

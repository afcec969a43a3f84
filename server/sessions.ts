import { randomBytes } from 'node:crypto';
import { failedPrecondition, invalidArgument, resourceExhausted } from '../common/errors.js';
import type { Snapshot } from '../common/messages.js';
import { pinKey } from './index-db.js';
import type { Repository, TreeRefs } from './repository.js';

export interface Session {
  id: string;
  repo: Repository;
  dataset: string;
  host: string;
  paths: string[];
  tags: string[];
  time: string;
  parent: Snapshot | undefined;
  principal: string;
  lastUsed: number;
  newBytes: number;
  newChunks: number;
  trees: UploadedTrees;
}

export interface SessionLimits {
  maxSessions: number;
  maxSessionsPerPrincipal: number;
  /**
   * Upload streams one principal may have open: each may hold three messages of up to
   * MAX_MESSAGE_BYTES (one verified, two read ahead), so this bounds what one token can make
   * the server buffer.
   */
  maxUploadsPerPrincipal: number;
  idleTimeoutMs: number;
}

/** Bytes of tree refs one session keeps for its commit: 32 per chunk, so ~250,000 chunks' worth. */
export const SESSION_TREE_BYTES = 8 * 1024 * 1024;
/** The same across every open session, so many sessions (or hostile ones) cannot add up. */
export const ALL_SESSIONS_TREE_BYTES = 64 * 1024 * 1024;
/** What one kept tree or directory entry costs beyond its ids (objects, map entry, hex key). */
const OVERHEAD = 256;

/**
 * The refs of the trees a session uploaded (subdirectories and chunk ids, taken when Upload
 * decoded them to verify them), for its commit to check without reading, inflating and
 * decoding them again: that was about a third of a changed-day commit's verification.
 * Bounded per session and across sessions; trees past either bound are read back as before.
 * Released when the session ends.
 */
export class UploadedTrees {
  private readonly trees = new Map<string, TreeRefs>();
  private bytes = 0;

  constructor(private readonly shared: { used: number }) {}

  remember(hex: string, refs: TreeRefs): void {
    let cost = OVERHEAD + refs.chunks.length;
    for (const d of refs.dirs) cost += OVERHEAD + d.name.length * 2;
    if (this.trees.has(hex) || this.bytes + cost > SESSION_TREE_BYTES || this.shared.used + cost > ALL_SESSIONS_TREE_BYTES) return;
    this.trees.set(hex, refs);
    this.bytes += cost;
    this.shared.used += cost;
  }

  get(hex: string): TreeRefs | undefined {
    return this.trees.get(hex);
  }

  release(): void {
    this.shared.used -= this.bytes;
    this.bytes = 0;
    this.trees.clear();
  }
}

/**
 * Live backup sessions. A session pins what it was told exists (and its parent's root tree)
 * in LevelDB under pin/<session>/, so garbage collection keeps them until it commits,
 * aborts or expires; pins live on disk, so memory does not grow with a backup's size.
 */
export class SessionManager {
  private readonly sessions = new Map<string, Session>();
  private readonly treeBytes = { used: 0 };
  private readonly uploads = new Map<string, number>();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly limits: SessionLimits) {
    this.timer = setInterval(() => void this.expire(), Math.min(60_000, limits.idleTimeoutMs)).unref();
  }

  /**
   * `findParent` runs inside the same shared hold of the GC lock as the parent's pin: a prune
   * then either sees the pin when it marks again under the lock, or has unindexed before the
   * lookup, when a forgotten parent is no longer listed. Looked up outside, a parent forgotten
   * meanwhile could be handed to the client while its pin waited behind the prune.
   */
  async begin(init: Omit<Session, 'id' | 'lastUsed' | 'newBytes' | 'newChunks' | 'trees' | 'parent'>, findParent: () => Promise<Snapshot | undefined>): Promise<Session> {
    if (this.sessions.size >= this.limits.maxSessions) {
      throw resourceExhausted(`server has ${this.sessions.size} backup sessions open, the limit is ${this.limits.maxSessions}; retry later`);
    }
    const mine = [...this.sessions.values()].filter((s) => s.principal === init.principal).length;
    if (mine >= this.limits.maxSessionsPerPrincipal) {
      throw resourceExhausted(`${init.principal} has ${mine} backup sessions open, the limit is ${this.limits.maxSessionsPerPrincipal} per token`);
    }
    const session: Session = { ...init, parent: undefined, id: randomBytes(16).toString('hex'), lastUsed: Date.now(), newBytes: 0, newChunks: 0, trees: new UploadedTrees(this.treeBytes) };
    await session.repo.gcLock.shared(async () => {
      session.parent = await findParent();
      if (session.parent) await session.repo.index.putMarkers([pinKey(session.id, session.parent.rootTree)]);
    });
    this.sessions.set(session.id, session);
    return session;
  }

  /** Counts an Upload stream against its principal's limit; call the result once when it ends. */
  openUpload(principal: string): () => void {
    const open = this.uploads.get(principal) ?? 0;
    if (open >= this.limits.maxUploadsPerPrincipal) {
      throw resourceExhausted(`${principal} has ${open} Upload streams open, the limit is ${this.limits.maxUploadsPerPrincipal} per token (a backup opens one per channel): use fewer --channels or concurrent backups, or raise the server's --max-uploads-per-token`);
    }
    this.uploads.set(principal, open + 1);
    let closed = false;
    return () => {
      if (closed) return;
      closed = true;
      const left = (this.uploads.get(principal) ?? 1) - 1;
      if (left > 0) this.uploads.set(principal, left);
      else this.uploads.delete(principal);
    };
  }

  get(id: string, principal: string): Session {
    if (!id) throw invalidArgument('session_id is required');
    const s = this.sessions.get(id);
    if (!s || s.principal !== principal) throw failedPrecondition(`backup session ${id} is unknown, finished or expired; start a new backup`);
    // The sweep runs on a timer; a session past its idle limit is refused even before it runs.
    if (Date.now() - s.lastUsed > this.limits.idleTimeoutMs) {
      void this.expire();
      throw failedPrecondition(`backup session ${id} expired after ${Math.round(this.limits.idleTimeoutMs / 1000)}s idle; its pins are released, start a new backup`);
    }
    s.lastUsed = Date.now();
    return s;
  }

  async pin(s: Session, idsHex: string[]): Promise<void> {
    await s.repo.index.putMarkers(idsHex.map((h) => pinKey(s.id, h)));
    // An Upload or FindMissing still running when its session ended writes after end() cleared
    // the session's pins: clear again, or they would keep their chunks from prune until restart.
    if (!this.sessions.has(s.id)) await s.repo.index.deletePrefix(`pin/${s.id}/`);
  }

  async end(s: Session): Promise<void> {
    this.sessions.delete(s.id);
    s.trees.release();
    await s.repo.index.deletePrefix(`pin/${s.id}/`);
  }

  async expire(now = Date.now()): Promise<void> {
    for (const s of [...this.sessions.values()]) {
      if (now - s.lastUsed > this.limits.idleTimeoutMs) {
        s.repo.log.warn({ session: s.id, dataset: s.dataset, host: s.host }, 'backup session expired; its pins are released');
        // Runs from a timer: a rejection here would be unhandled and end the process. Pins left
        // behind by a failure are cleared with all others at the next start.
        await this.end(s).catch((err) => s.repo.log.error({ session: s.id, err: (err as Error).message }, 'releasing the pins of an expired session failed'));
      }
    }
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    for (const s of [...this.sessions.values()]) await this.end(s);
  }
}

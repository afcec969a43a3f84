/**
 * Prune: mark and sweep garbage collection that backups keep running through.
 *
 * Mark. Every blob reachable from a snapshot or a pin is marked as `m/<id>` in a scratch
 * LevelDB (scratch.ts), never in a JS set, so memory does not grow with the number of chunks.
 * Pins are `pin/<session>/<id>` keys: what FindMissing and Upload told a live session exists,
 * and the session's parent root tree (the client reuses the parent's chunk lists without
 * asking); a pinned tree is walked like a snapshot's. A tree walked once (`w/<id>`) is not
 * walked again.
 * Only packs indexed when prune starts are candidates: what backups write meanwhile is never
 * touched.
 *
 * Classify. Each indexed blob of a candidate pack is live (marked) or condemned (`d/<id>`),
 * and each pack gets its live and unused byte counts.
 *
 * The dangerous window: after the mark, a backup can ask FindMissing about a condemned blob
 * X, hear "present", and reference X without uploading it. So, under `repo.gcLock` held
 * exclusive (FindMissing, Upload and BeginBackup's parent pin hold it shared from lookup to
 * pin, see gc-lock.ts):
 *   1. flush the pack writer, so every pack a backup has stored is indexed;
 *   2. mark again from the pins, then from the snapshots (in that order: a commit indexes its
 *      snapshot before it drops its pins, so one of the two reads sees what it references);
 *   3. rescue the condemned blobs that are now marked;
 *   4. unindex the rest (their chunk/ and verified/ keys).
 * Any "present" answered before the lock left a pin that step 2 walked; after the lock,
 * FindMissing answers "missing" for the unindexed blobs and clients upload them again, into
 * new packs.
 *
 * Sweep, new data first and deletions last:
 *   5. repack the packs chosen so that unused bytes stay under max-unused: read their live
 *      blobs, re-verify each, add them through the pack writer and flush (the new packs, then
 *      their index segment, then LevelDB point at the copies);
 *   6. write fresh index segments listing the surviving packs of every segment that names a
 *      doomed pack (and of small segments, consolidated), then delete the segments replaced;
 *   7. delete the packs left with no live blob, each checked first (no index entry may point
 *      into it), its pack/ key before its object; a batch at a time under the lock, after a
 *      writer flush, and never a pack the writer stored since prune began (a backup that
 *      uploads a doomed pack's blobs in the same order stores the same bytes under its key).
 *
 * Crash safety, kill -9 anywhere: until step 4 only the scratch db has changed. After it, each
 * unindexed blob was unreachable from every snapshot and pin and its pack is still there. After
 * 5, repacked blobs exist twice and the index points at one copy. After 6, every surviving pack
 * is in a fresh segment; a doomed pack may be in none, and rebuild-index would read its trailer.
 * A key deleted before its object leaves an unindexed pack. All of these are what the next prune
 * removes: packs with no live entry and unindexed packs (no index entry names their blobs, so no
 * commit can reference them). A restart drops every pin; sessions do not survive it either.
 */
import { CairnError, Code, dataLoss, invalidArgument } from '../common/errors.js';
import { fromHex, isHexId, toHex } from '../common/hash.js';
import type { BlobKind, Snapshot } from '../common/messages.js';
import { ENTRY_BYTES, FOOTER_BYTES, packKey, parseFooter } from '../common/pack-format.js';
import { readBlobsByPack } from './blob-reader.js';
import { exclusiveMaintenance } from './gc-lock.js';
import { decodeLocation, packInfoKey, verifiedKey, type Batch, type IndexDb, type PackInfo } from './index-db.js';
import { joinSegment, recordFromPackTail, segmentKey, splitSegment, type SegmentRecord } from './index-segment.js';
import type { ObjectStore, RequestCounts } from './object-store.js';
import type { Repository } from './repository.js';
import { Scratch } from './scratch.js';
import { walkTrees } from './tree-walk.js';

export const DEFAULT_MAX_UNUSED = 0.05;
const BATCH = 1000;
/** Packs deleted per round: one LevelDB batch and one store delete call each. */
const DELETE_BATCH = 100;
/** Entries per fresh index segment (5 MB), so rewriting the index never holds it whole in memory. */
const SEGMENT_ENTRIES = 100_000;
const MARK = 'm/';
const WALKED = 'w/';
const CONDEMNED = 'd/';
const MEMBER = 'p/';
const EMPTY = Buffer.alloc(0);

export interface PruneOptions {
  dryRun?: boolean;
  /** Share of unused bytes tolerated in the packs that are kept, 0..1. */
  maxUnused?: number;
}

export interface PruneResult {
  dryRun: boolean;
  /** Packs removed outright: no live blob, or not indexed at all. */
  packsDeleted: number;
  /** Packs whose live blobs were copied into new packs before they were removed. */
  packsRewritten: number;
  /** Bytes of the removed packs minus the bytes copied into new packs. */
  bytesFreed: number;
  /** Blobs no snapshot or session references, unindexed. */
  chunksRemoved: number;
  /** Unused bytes left in kept packs (within max-unused). */
  bytesUnusedKept: number;
  /** Object-store requests during the prune (concurrent backups' included). */
  requests: RequestCounts;
}

interface PackStat {
  size: number;
  kind: BlobKind;
  entries: number;
  liveBytes: number;
  liveCount: number;
  deadCount: number;
  inStore: boolean;
}

interface Plan {
  remove: Map<string, number>;
  repack: string[];
  bytesUnusedKept: number;
  chunksRemoved: number;
}

let checkpointHook: ((point: string) => Promise<void>) | undefined;

/** Test-only: runs `hook` at each named point of a prune in this process (concurrency tests). */
export function setPruneCheckpointHook(hook: ((point: string) => Promise<void>) | undefined): void {
  checkpointHook = hook;
}

/**
 * Named points between prune's steps. Test-only: CAIRN_TEST_CRASH_AT=<point> makes the
 * server kill itself with SIGKILL there, so crash tests hit each step boundary exactly.
 */
async function checkpoint(point: string): Promise<void> {
  if (process.env.CAIRN_TEST_CRASH_AT === point) process.kill(process.pid, 'SIGKILL');
  await checkpointHook?.(point);
}

export async function prune(repo: Repository, opts: PruneOptions = {}): Promise<PruneResult> {
  const maxUnused = opts.maxUnused ?? DEFAULT_MAX_UNUSED;
  if (!(maxUnused >= 0 && maxUnused <= 1)) throw invalidArgument(`max unused must be a share from 0 to 1 (0% to 100%), got ${maxUnused}`);
  return exclusiveMaintenance(repo, 'prune', () =>
    Scratch.run(repo.index.dir, 'prune', async (scratch) => {
      const storedMeanwhile = repo.writer.watchStored();
      try {
        return await new Pruner(repo, scratch.db, maxUnused, opts.dryRun ?? false, storedMeanwhile).run();
      } finally {
        repo.writer.unwatchStored();
      }
    }),
  );
}

class Pruner {
  private readonly packs = new Map<string, PackStat>();
  /** Every pack object listed in the store at the start, with its size. */
  private readonly stored = new Map<string, number>();
  private readonly before: RequestCounts;

  constructor(
    private readonly repo: Repository,
    private readonly scratch: IndexDb,
    private readonly maxUnused: number,
    private readonly dryRun: boolean,
    /** Packs the writer stored since this prune began: any of them may be a doomed pack stored again. */
    private readonly storedMeanwhile: ReadonlySet<string>,
  ) {
    this.before = repo.store.counts();
  }

  async run(): Promise<PruneResult> {
    const started = Date.now();
    // A commit whose index write failed (the index's disk full, say) without the process dying
    // leaves a snapshot object the index lacks; marked from the index alone, its packs would go,
    // and the next start would index it again as the newest snapshot, with its data gone.
    await this.repo.reconcileSnapshots();
    await this.loadPacks();
    await this.mark();
    await checkpoint('prune:after-mark');
    await this.classify();
    if (this.dryRun) {
      const plan = this.plan(new Map([...this.stored].filter(([hex]) => !this.packs.has(hex))));
      const repacked = plan.repack.map((hex) => this.packs.get(hex)!);
      const removed = {
        packs: plan.remove.size + repacked.length,
        bytes: sum(plan.remove.values()) + sum(repacked.map((s) => s.size)),
      };
      return this.result(plan, removed, sum(repacked.map((s) => s.liveBytes + s.liveCount * ENTRY_BYTES)), true);
    }
    const orphans = await this.repo.gcLock.exclusive(async () => {
      await this.repo.writer.flush();
      await this.mark();
      const found = await this.findOrphans();
      await this.unindexCondemned();
      return found;
    });
    await checkpoint('prune:after-unindex');
    const plan = this.plan(orphans);
    const rewrittenBytes = await this.repack(plan.repack);
    await checkpoint('prune:after-repack');
    const doomed = new Map(plan.remove);
    for (const hex of plan.repack) doomed.set(hex, this.packs.get(hex)!.size);
    const oldSegments = await this.writeFreshIndex(new Set(doomed.keys()));
    await checkpoint('prune:after-index');
    await this.repo.store.delete(oldSegments);
    await checkpoint('prune:after-old-index-deleted');
    const removed = await this.deletePacks(doomed);
    const result = this.result(plan, removed, rewrittenBytes, false);
    this.repo.log.info({ repository: this.repo.name, ...result, seconds: (Date.now() - started) / 1000 }, 'prune finished');
    return result;
  }

  private result(plan: Plan, removed: { packs: number; bytes: number }, rewrittenBytes: number, dryRun: boolean): PruneResult {
    const after = this.repo.store.counts();
    const requests = Object.fromEntries(Object.entries(after).map(([k, v]) => [k, v - this.before[k as keyof RequestCounts]])) as unknown as RequestCounts;
    return {
      dryRun,
      packsDeleted: removed.packs - plan.repack.length,
      packsRewritten: plan.repack.length,
      bytesFreed: Math.max(0, removed.bytes - rewrittenBytes),
      chunksRemoved: plan.chunksRemoved,
      bytesUnusedKept: plan.bytesUnusedKept,
      requests,
    };
  }

  private async loadPacks(): Promise<void> {
    for await (const [key, value] of this.repo.index.entries('pack/')) {
      const info = JSON.parse(value.toString('utf8')) as PackInfo;
      this.packs.set(key.slice('pack/'.length), { size: info.size, kind: info.kind, entries: info.entries, liveBytes: 0, liveCount: 0, deadCount: 0, inStore: false });
    }
    // Listed after the index was read, so a pack stored in between looks unindexed here;
    // findOrphans asks the index again, after a flush, before anything is called an orphan.
    for await (const o of this.repo.store.list('packs/')) {
      const hex = o.key.slice(o.key.lastIndexOf('/') + 1);
      if (!isHexId(hex)) continue;
      this.stored.set(hex, o.size);
      const p = this.packs.get(hex);
      if (p) p.inStore = true;
    }
  }

  /** Marks from every pin, then every snapshot; what is already marked is skipped, so the second call walks only what is new. */
  private async mark(): Promise<void> {
    const batch: string[] = [];
    for await (const key of this.repo.index.keys('pin/')) {
      batch.push(key.slice(key.lastIndexOf('/') + 1));
      if (batch.length >= BATCH) await this.markPinned(batch.splice(0));
    }
    await this.markPinned(batch);
    const roots: Buffer[] = [];
    for await (const value of this.repo.index.db.values({ gte: 'snap/', lt: 'snap/\xff' })) {
      roots.push(fromHex((JSON.parse(value.toString('utf8')) as Snapshot).rootTree));
      if (roots.length >= BATCH) await this.walk(roots.splice(0));
    }
    await this.walk(roots);
  }

  /**
   * A pinned tree is walked even if already marked: it may have been marked as a plain id while
   * it was waiting in the pack writer, before its subtrees could be read.
   */
  private async markPinned(hexes: string[]): Promise<void> {
    if (hexes.length === 0) return;
    const unique = [...new Set(hexes)];
    const ids = unique.map(fromHex);
    const locs = await this.repo.index.locate(ids);
    const marks = await this.scratch.db.getMany(unique.map((h) => MARK + h));
    // A tree stored as a data blob (Repository.readTree) is known by its verified mark: a
    // session's parent root is pinned so that everything below it stays, whatever its kind.
    const verified = await this.repo.index.db.getMany(unique.map((h) => verifiedKey(h)));
    const isTree = (i: number) => locs[i] !== undefined && (locs[i]!.kind === 'TREE' || verified[i] !== undefined);
    await this.scratch.putMarkers(unique.filter((_, i) => !isTree(i) && marks[i] === undefined).map((h) => MARK + h));
    await this.walk(ids.filter((_, i) => isTree(i)), true);
  }

  /**
   * `fromPins`: a session's trees arrive in any order (a directory's tree may be stored before
   * its subtrees), so a pinned tree may name a subtree that is not stored yet; it is left to be
   * walked by a later mark. What is not indexed cannot be condemned; a snapshot's missing tree,
   * though, means references nobody can know.
   */
  private async walk(roots: Buffer[], fromPins = false): Promise<void> {
    await walkTrees(this.repo, this.scratch, WALKED, roots, {
      visit: async (id, nodes) => {
        const keys = [MARK + toHex(id)];
        for (const n of nodes) if (n.type === 'FILE') for (const c of n.chunks) keys.push(MARK + toHex(c));
        await this.scratch.putMarkers(keys);
      },
      unreadable: async (id, err) => {
        if (fromPins && err instanceof CairnError && err.code === Code.NOT_FOUND) {
          await this.scratch.db.del(WALKED + toHex(id));
          return;
        }
        throw dataLoss(`tree ${toHex(id)} cannot be read (${(err as Error).message}); prune stopped without deleting anything, because what that tree references is unknown: run cairn check`);
      },
    });
  }

  private async classify(): Promise<void> {
    const batch: Array<[string, Buffer]> = [];
    for await (const [key, value] of this.repo.index.entries('chunk/')) {
      batch.push([key.slice('chunk/'.length), value]);
      if (batch.length >= BATCH) await this.classifyBatch(batch.splice(0));
    }
    await this.classifyBatch(batch);
  }

  private async classifyBatch(batch: Array<[string, Buffer]>): Promise<void> {
    const marks = await this.scratch.db.getMany(batch.map(([hex]) => MARK + hex));
    const ops: Batch = [];
    batch.forEach(([hex, value], i) => {
      const loc = decodeLocation(value);
      const packHex = toHex(loc.pack);
      const stat = this.packs.get(packHex);
      if (!stat) return;
      ops.push({ type: 'put', key: `${MEMBER}${packHex}/${hex}`, value: EMPTY });
      if (marks[i] !== undefined) {
        stat.liveBytes += loc.storedLength;
        stat.liveCount++;
      } else {
        stat.deadCount++;
        ops.push({ type: 'put', key: CONDEMNED + hex, value: Buffer.from(value) });
      }
    });
    await this.scratch.batch(ops);
  }

  /** Packs in the store that the index does not know, asked after a writer flush (under the lock). */
  private async findOrphans(): Promise<Map<string, number>> {
    const orphans = new Map<string, number>();
    const candidates = [...this.stored.keys()].filter((hex) => !this.packs.has(hex));
    for (let i = 0; i < candidates.length; i += BATCH) {
      const slice = candidates.slice(i, i + BATCH);
      const infos = await this.repo.index.db.getMany(slice.map(packInfoKey));
      slice.forEach((hex, j) => infos[j] === undefined && orphans.set(hex, this.stored.get(hex)!));
    }
    return orphans;
  }

  /** Steps 3 and 4 (under the lock): condemned blobs marked since are rescued, the rest unindexed. */
  private async unindexCondemned(): Promise<void> {
    let removed = 0;
    let batch: Array<[string, Buffer]> = [];
    const flush = async () => {
      const marks = await this.scratch.db.getMany(batch.map(([hex]) => MARK + hex));
      const unindex: Batch = [];
      const rescued: Batch = [];
      batch.forEach(([hex, value], i) => {
        const loc = decodeLocation(value);
        const stat = this.packs.get(toHex(loc.pack))!;
        if (marks[i] !== undefined) {
          rescued.push({ type: 'del', key: CONDEMNED + hex });
          stat.deadCount--;
          stat.liveBytes += loc.storedLength;
          stat.liveCount++;
          return;
        }
        unindex.push({ type: 'del', key: `chunk/${hex}` });
        // Whatever its kind: a tree may be stored as a data blob (Repository.readTree), and a
        // verified marker left behind would let a commit name the tree after it is gone.
        unindex.push({ type: 'del', key: verifiedKey(hex) });
        removed++;
      });
      await this.repo.index.batch(unindex);
      await this.scratch.batch(rescued);
      batch = [];
    };
    for await (const [key, value] of this.scratch.entries(CONDEMNED)) {
      batch.push([key.slice(CONDEMNED.length), value]);
      if (batch.length >= BATCH) await flush();
    }
    await flush();
    if (removed > 0) this.repo.log.info({ repository: this.repo.name, removed }, 'prune: unreferenced blobs unindexed');
  }

  /**
   * restic's rule: packs with no live blob go; then the packs with the largest unused share
   * are repacked until the unused bytes left are at most maxUnused of all bytes kept
   * (unused <= maxUnused / (1 - maxUnused) * used).
   */
  private plan(orphans: Map<string, number>): Plan {
    const remove = new Map(orphans);
    const partial: Array<{ hex: string; unused: number; share: number }> = [];
    let used = 0;
    let chunksRemoved = 0;
    for (const [hex, s] of this.packs) {
      chunksRemoved += s.deadCount;
      used += s.liveBytes;
      if (s.liveCount === 0) {
        remove.set(hex, s.inStore ? s.size : 0);
        continue;
      }
      if (!s.inStore) {
        this.repo.log.error({ pack: hex }, 'pack is indexed but missing from the store; prune leaves it alone: run cairn check');
        continue;
      }
      const dataArea = s.size - s.entries * ENTRY_BYTES - FOOTER_BYTES;
      const unused = dataArea - s.liveBytes;
      if (unused > 0) partial.push({ hex, unused, share: unused / dataArea });
    }
    partial.sort((a, b) => b.share - a.share || b.unused - a.unused);
    const limit = this.maxUnused >= 1 ? Infinity : (this.maxUnused / (1 - this.maxUnused)) * used;
    let unusedKept = partial.reduce((n, p) => n + p.unused, 0);
    const repack: string[] = [];
    for (const p of partial) {
      if (unusedKept <= limit) break;
      repack.push(p.hex);
      unusedKept -= p.unused;
    }
    return { remove, repack, bytesUnusedKept: unusedKept, chunksRemoved };
  }

  /** Ids of the blobs that the index placed in this pack when prune classified them. */
  private async members(packHex: string): Promise<Buffer[]> {
    const ids: Buffer[] = [];
    const prefix = `${MEMBER}${packHex}/`;
    for await (const key of this.scratch.keys(prefix)) ids.push(fromHex(key.slice(prefix.length)));
    return ids;
  }

  /** Ids among `ids` whose index entry points into `packHex`. */
  private async stillIn(packHex: string, ids: Buffer[]): Promise<Buffer[]> {
    const inPack: Buffer[] = [];
    for (let i = 0; i < ids.length; i += BATCH) {
      const slice = ids.slice(i, i + BATCH);
      const locs = await this.repo.index.locate(slice);
      slice.forEach((id, j) => locs[j] && toHex(locs[j].pack) === packHex && inPack.push(id));
    }
    return inPack;
  }

  private async repack(packHexes: string[]): Promise<number> {
    let written = 0;
    for (const hex of packHexes) {
      const live = await this.stillIn(hex, await this.members(hex));
      for await (const b of readBlobsByPack(this.repo, live)) {
        this.repo.inflateVerified(b.id, b.loc, b.stored);
        await this.repo.writer.add({ id: b.id, kind: b.loc.kind, compressed: b.loc.compressed, rawLength: b.loc.rawLength, data: b.stored });
        written += b.stored.length + ENTRY_BYTES;
      }
    }
    await this.repo.writer.flush();
    return written;
  }

  /**
   * Step 6: fresh segments replace every segment that names a doomed pack or cannot be read,
   * and the small ones (each commit writes one, so they pile up), carrying over their surviving
   * packs; indexed packs that no segment lists get a record from their own trailer. Segments
   * are handled one at a time as bytes, never decoded into entry objects. Returns the keys of
   * the segments replaced, to be deleted once the fresh ones are stored.
   */
  private async writeFreshIndex(doomed: Set<string>): Promise<string[]> {
    const store = this.repo.store;
    const listed: Array<{ key: string; size: number }> = [];
    for await (const o of store.list('index/')) listed.push(o);
    const small = listed.filter((o) => o.size < (SEGMENT_ENTRIES / 4) * ENTRY_BYTES);
    const consolidate = small.length >= 2 ? new Set(small.map((o) => o.key)) : new Set<string>();
    const replaced: string[] = [];
    const fresh = new Set<string>();
    const covered = new Set<string>();
    let pending: SegmentRecord[] = [];
    let pendingEntries = 0;
    const writeSegment = async () => {
      if (pending.length === 0) return;
      const segment = joinSegment(pending);
      await store.put(segmentKey(segment.id), segment.data);
      fresh.add(segmentKey(segment.id));
      pending = [];
      pendingEntries = 0;
    };
    const carry = async (r: SegmentRecord) => {
      covered.add(toHex(r.id));
      pending.push(r);
      pendingEntries += r.entries;
      if (pendingEntries >= SEGMENT_ENTRIES) await writeSegment();
    };
    for (const { key } of listed) {
      let records: SegmentRecord[];
      try {
        records = splitSegment(await store.get(key), key);
      } catch (err) {
        this.repo.log.warn({ segment: key, err: (err as Error).message }, 'prune: unreadable index segment replaced; its packs are listed again from their trailers');
        replaced.push(key);
        continue;
      }
      if (!consolidate.has(key) && !records.some((r) => doomed.has(toHex(r.id)))) {
        for (const r of records) covered.add(toHex(r.id));
        continue;
      }
      replaced.push(key);
      const todo = records.filter((r) => !covered.has(toHex(r.id)) && !doomed.has(toHex(r.id)));
      const infos = await this.repo.index.db.getMany(todo.map((r) => packInfoKey(toHex(r.id))));
      for (let i = 0; i < todo.length; i++) {
        // A pack a backup has just stored may be in a segment before its pack/ key lands.
        if (infos[i] !== undefined || (await store.head(packKey(toHex(todo[i].id))))) await carry(todo[i]);
      }
    }
    for await (const [key, value] of this.repo.index.entries('pack/')) {
      const hex = key.slice('pack/'.length);
      if (covered.has(hex) || doomed.has(hex)) continue;
      const info = JSON.parse(value.toString('utf8')) as PackInfo;
      try {
        await carry(recordFromPackTail(fromHex(hex), info.size, info.kind, await readTail(store, hex, info.size), packKey(hex)));
      } catch (err) {
        this.repo.log.error({ pack: hex, err: (err as Error).message }, 'prune: pack trailer unreadable; the pack is left out of the fresh index: run cairn check --read-data');
      }
    }
    await writeSegment();
    return replaced.filter((k) => !fresh.has(k));
  }

  /**
   * Step 7, a batch at a time under the lock held exclusive, after a writer flush: no pack can
   * be stored while a batch is checked and deleted. A doomed pack that a backup stored again
   * (the same blobs in the same order make the same bytes, so the same key) is kept: its new
   * index entries point into it, and the orphan or dead copy it replaced is gone with it.
   */
  private async deletePacks(remove: Map<string, number>): Promise<{ packs: number; bytes: number }> {
    const hexes = [...remove.keys()];
    const deleted = { packs: 0, bytes: 0 };
    for (let i = 0; i < hexes.length; i += DELETE_BATCH) {
      await this.repo.gcLock.exclusive(async () => {
        await this.repo.writer.flush();
        const ops: Batch = [];
        const keys: string[] = [];
        for (const hex of hexes.slice(i, i + DELETE_BATCH)) {
          if (this.storedMeanwhile.has(hex)) {
            this.repo.log.info({ pack: hex }, 'prune: a backup stored this pack again while prune ran; kept');
            continue;
          }
          const referenced = await this.stillIn(hex, await this.members(hex));
          if (referenced.length > 0) {
            this.repo.log.error({ pack: hex, blob: toHex(referenced[0]), blobs: referenced.length }, 'prune: pack still holds indexed blobs; not deleted');
            continue;
          }
          ops.push({ type: 'del', key: packInfoKey(hex) });
          keys.push(packKey(hex));
          deleted.bytes += remove.get(hex)!;
        }
        // Synced before any object goes, and with it the unindexing of step 4: after a power
        // loss, index entries come back only for packs that still exist.
        await this.repo.index.batch(ops, { sync: true });
        await checkpoint('prune:mid-delete');
        await this.repo.store.delete(keys);
        deleted.packs += keys.length;
      });
    }
    return deleted;
  }
}

function sum(values: Iterable<number>): number {
  let n = 0;
  for (const v of values) n += v;
  return n;
}

/** A pack's trailer and footer, from two ranged reads (the footer says how long the trailer is). */
async function readTail(store: ObjectStore, packHex: string, size: number): Promise<Buffer> {
  const key = packKey(packHex);
  const footer = parseFooter(await store.getRange(key, size - FOOTER_BYTES, FOOTER_BYTES), size, key);
  return store.getRange(key, size - FOOTER_BYTES - footer.trailerLength, footer.trailerLength + FOOTER_BYTES);
}

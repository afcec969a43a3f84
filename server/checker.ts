import { randomInt } from 'node:crypto';
import { CairnError, Code, invalidArgument } from '../common/errors.js';
import { fromHex, hash, isHexId, toHex } from '../common/hash.js';
import type { Node, Snapshot } from '../common/messages.js';
import type { CheckProblem } from '../common/admin-messages.js';
import { packKey, parsePack } from '../common/pack-format.js';
import { decodeTree } from '../common/tree.js';
import { exclusiveMaintenance } from './gc-lock.js';
import { decodeLocation, snapKey, type IndexDb, type Location, type PackInfo } from './index-db.js';
import type { Repository } from './repository.js';
import { Scratch } from './scratch.js';
import { parseSnapshotRecord, snapshotObjectKey } from './snapshot-record.js';
import { walkTrees } from './tree-walk.js';

export interface CheckOptions {
  /** Read packs and re-hash every blob in them. */
  readData?: boolean;
  /** With readData: a random share (0..1] of the packs instead of all. */
  subset?: number;
  /** With readData: the n-th of m groups of packs (grouped by id), restic's n/m. */
  part?: { n: number; m: number };
}


export interface CheckResult {
  problems: CheckProblem[];
  snapshotsChecked: number;
  treesChecked: number;
  packsChecked: number;
  packsRead: number;
  blobsRead: number;
  problemsOmitted: number;
  /** Every problem found, listed or not, by kind, sorted by kind. */
  problemCounts: Array<{ kind: string; count: number }>;
}

const BATCH = 1000;
const MAX_FILES_PER_PROBLEM = 1000;
/**
 * Problems listed in full; the rest are counted. A repository that lost its packs has one
 * problem per blob, and listing 230,000 of them took 536 MiB and a 75 MB reply.
 */
const MAX_PROBLEMS = 1000;
/**
 * Past MAX_PROBLEMS, the first problem of a kind not yet listed is still listed, up to this
 * many: a corrupt snapshot object found after 1,000 missing chunks must not hide in a count.
 */
const MAX_EXTRA_KINDS = 32;
/**
 * Snapshots checked together: each object is a round trip (~30 ms on S3), and so is each
 * root tree, and a fleet's repository holds tens of thousands of snapshots.
 */
const SNAPSHOTS_AT_ONCE = 16;
/**
 * Bytes of file paths and snapshot ids listed across all problems: a thousand problems of a
 * thousand 1 KB paths each passed the 65 MiB reply limit. Past it, paths and snapshots are counted.
 */
const MAX_LISTED_BYTES = 32 * 1024 * 1024;
/** What badBlob records for a blob whose problem is counted, not listed. */
const UNLISTED = 0xffffffff;
/** Scratch prefixes: trees walked by the structure pass, bad blob -> problem number, trees known clean. */
const WALKED = 't/';
const BAD = 'b/';
const CLEAN = 'c/';

interface Problem {
  kind: string;
  message: string;
  pack: string;
  chunk: string;
  snapshots: Set<string>;
  files: Set<string>;
  moreFiles: number;
  /** Snapshots it hurts that the listing budget left out. */
  snapshotsCut: boolean;
}

/** A snapshot object as read ahead: its bytes, undefined when the store has none, or the store's failure. */
type SnapshotObject = { data: Buffer | undefined } | { error: unknown };

async function fetchSnapshotObject(repo: Repository, id: string): Promise<SnapshotObject> {
  try {
    return { data: await repo.store.get(snapshotObjectKey(id)) };
  } catch (err) {
    return err instanceof CairnError && err.code === Code.NOT_FOUND ? { data: undefined } : { error: err };
  }
}

export function parsePart(text: string): { n: number; m: number } {
  const match = /^(\d+)\/(\d+)$/.exec(text.trim());
  const n = Number(match?.[1]);
  const m = Number(match?.[2]);
  if (!match || !(m >= 1) || !(n >= 1 && n <= m)) throw invalidArgument(`read-data part ${JSON.stringify(text)} must be n/m with 1 <= n <= m, e.g. 2/5`);
  return { n, m };
}

/**
 * Verifies a repository. Structure: every snapshot object exists, every tree of every snapshot
 * reads, decodes and hashes right, every chunk it references is indexed in a pack that exists
 * with its recorded size. With readData: whole packs are read, checked against their name,
 * trailer and the index, and every blob is inflated and re-hashed. Problems name the pack and
 * blob, and then (by walking the snapshots again, only when something is wrong) the
 * snapshots and file paths they hurt.
 */
export async function check(repo: Repository, opts: CheckOptions = {}): Promise<CheckResult> {
  if (opts.subset !== undefined && !(opts.subset > 0 && opts.subset <= 1)) throw invalidArgument(`read-data subset must be a share above 0 and at most 1 (100%), got ${opts.subset}`);
  return exclusiveMaintenance(repo, 'check', () => Scratch.run(repo.index.dir, 'check', (scratch) => new Checker(repo, scratch.db, opts).run()));
}

class Checker {
  private readonly problems: Problem[] = [];
  private readonly counts = new Map<string, number>();
  private readonly listedKinds = new Set<string>();
  private extraKinds = 0;
  private readonly indexed = new Map<string, PackInfo>();
  private readonly stored = new Map<string, number>();
  /** Packs missing or of the wrong size -> their problem: every blob in them is lost. */
  private readonly badPacks = new Map<string, number>();
  private snapshotsChecked = 0;
  private treesChecked = 0;
  private packsRead = 0;
  private blobsRead = 0;
  private anyBadBlob = false;
  private listedBytes = 0;

  constructor(
    private readonly repo: Repository,
    private readonly scratch: IndexDb,
    private readonly opts: CheckOptions,
  ) {}

  async run(): Promise<CheckResult> {
    await this.checkPacks();
    await this.checkStructure();
    if (this.opts.readData) await this.readData();
    if (this.anyBadBlob) await this.attribute();
    const result: CheckResult = {
      problems: this.problems.map((p) => ({
        kind: p.kind,
        message: [p.message, p.moreFiles > 0 && `(and ${p.moreFiles} more files)`, p.snapshotsCut && '(more snapshots not listed)'].filter(Boolean).join(' '),
        pack: p.pack,
        chunk: p.chunk,
        snapshots: [...p.snapshots].sort(),
        files: [...p.files].sort(),
      })),
      snapshotsChecked: this.snapshotsChecked,
      treesChecked: this.treesChecked,
      packsChecked: this.indexed.size,
      packsRead: this.packsRead,
      blobsRead: this.blobsRead,
      problemsOmitted: [...this.counts.values()].reduce((a, b) => a + b, 0) - this.problems.length,
      problemCounts: [...this.counts].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([kind, count]) => ({ kind, count })),
    };
    this.repo.log.info({ repository: this.repo.name, ...result, problems: result.problems.length }, 'check finished');
    return result;
  }

  private problem(kind: string, message: string, where: { pack?: string; chunk?: string; snapshot?: string } = {}): number {
    this.counts.set(kind, (this.counts.get(kind) ?? 0) + 1);
    if (this.problems.length >= MAX_PROBLEMS) {
      if (this.listedKinds.has(kind) || this.extraKinds >= MAX_EXTRA_KINDS) return UNLISTED;
      this.extraKinds++;
    }
    this.listedKinds.add(kind);
    this.problems.push({ kind, message, pack: where.pack ?? '', chunk: where.chunk ?? '', snapshots: new Set(where.snapshot ? [where.snapshot] : []), files: new Set(), moreFiles: 0, snapshotsCut: false });
    return this.problems.length - 1;
  }

  /** Remembers that `idHex` is lost or corrupt, for the attribution pass; the first problem found for it wins. */
  private async badBlob(idHex: string, problem: number): Promise<void> {
    if ((await this.scratch.db.get(BAD + idHex)) !== undefined) return;
    const v = Buffer.allocUnsafe(4);
    v.writeUInt32BE(problem);
    await this.scratch.db.put(BAD + idHex, v);
    this.anyBadBlob = true;
  }

  private async checkPacks(): Promise<void> {
    for await (const [key, value] of this.repo.index.entries('pack/')) this.indexed.set(key.slice('pack/'.length), JSON.parse(value.toString('utf8')) as PackInfo);
    for await (const o of this.repo.store.list('packs/')) {
      const hex = o.key.slice(o.key.lastIndexOf('/') + 1);
      if (isHexId(hex)) this.stored.set(hex, o.size);
    }
    for (const [hex, info] of this.indexed) {
      const size = this.stored.get(hex);
      if (size === undefined) this.badPacks.set(hex, this.problem('missing-pack', `pack ${hex} is indexed but missing from the store`, { pack: hex }));
      else if (size !== info.size) this.badPacks.set(hex, this.problem('pack-size', `pack ${hex} is ${size} bytes in the store, the index recorded ${info.size}`, { pack: hex }));
    }
  }

  /**
   * The object is the snapshot's only durable record (the index is rebuilt from it), so it is
   * read and verified as a rebuild would: one that fails would be dropped from history.
   */
  private async checkSnapshotObject(id: string, fetched: SnapshotObject): Promise<'checked' | 'forgotten'> {
    const key = snapshotObjectKey(id);
    if ('error' in fetched) throw fetched.error;
    const data = fetched.data;
    if (data === undefined) {
      // The iterator reads the index as it was when check began; a forget since (a retention
      // policy after a commit, say) deletes the object first and then the index entry.
      if ((await this.repo.index.db.get(snapKey(id))) === undefined) return 'forgotten';
      this.problem('missing-snapshot-object', `snapshot ${id} is indexed but ${key} is missing from the store (rebuild-index would lose it)`, { snapshot: id });
      return 'checked';
    }
    let damage = toHex(hash(data)) === id ? undefined : `does not hash to its name`;
    if (!damage) {
      try {
        parseSnapshotRecord(data, key);
      } catch (err) {
        damage = (err as Error).message;
      }
    }
    if (damage) this.problem('snapshot-object-corrupt', `${key} ${damage} (rebuild-index would lose snapshot ${id})`, { snapshot: id });
    return 'checked';
  }

  private async checkStructure(): Promise<void> {
    let batch: Snapshot[] = [];
    for await (const value of this.repo.index.db.values({ gte: 'snap/', lt: 'snap/\xff' })) {
      batch.push(JSON.parse(value.toString('utf8')) as Snapshot);
      if (batch.length === SNAPSHOTS_AT_ONCE) {
        await this.checkSnapshots(batch);
        batch = [];
      }
    }
    await this.checkSnapshots(batch);
  }

  /** Their objects are read at once, and their trees walked together, so store round trips overlap. */
  private async checkSnapshots(batch: Snapshot[]): Promise<void> {
    const objects = await Promise.all(batch.map((s) => fetchSnapshotObject(this.repo, s.id)));
    const roots: Buffer[] = [];
    for (let i = 0; i < batch.length; i++) {
      if ((await this.checkSnapshotObject(batch[i].id, objects[i])) === 'forgotten') continue;
      this.snapshotsChecked++;
      roots.push(fromHex(batch[i].rootTree));
    }
    this.treesChecked += await walkTrees(this.repo, this.scratch, WALKED, roots, {
      visit: (_id, nodes) => this.checkChunks(nodes),
      unreadable: async (id, err) => {
        const e = err as CairnError;
        const kind = e instanceof CairnError && e.code === Code.NOT_FOUND ? 'missing-tree' : 'tree-unreadable';
        await this.badBlob(toHex(id), this.problem(kind, e.message, { chunk: toHex(id) }));
      },
    });
  }

  private async checkChunks(nodes: Node[]): Promise<void> {
    const ids = new Map<string, Buffer>();
    for (const n of nodes) if (n.type === 'FILE') for (const c of n.chunks) ids.set(toHex(c), c);
    const list = [...ids.values()];
    for (let i = 0; i < list.length; i += BATCH) {
      const slice = list.slice(i, i + BATCH);
      const locs = await this.repo.index.locate(slice);
      for (let j = 0; j < slice.length; j++) {
        const hex = toHex(slice[j]);
        const loc = locs[j];
        // Of either kind: a file may be a copy of a tree's encoding (Repository.readTree).
        if (!loc) {
          // Reported once, however many files reference it: the attribution pass lists them.
          if ((await this.scratch.db.get(BAD + hex)) !== undefined) continue;
          await this.badBlob(hex, this.problem('missing-chunk', `chunk ${hex} is referenced but not indexed`, { chunk: hex }));
          continue;
        }
        const packHex = toHex(loc.pack);
        let bad = this.badPacks.get(packHex);
        if (bad === undefined && !this.stored.has(packHex)) {
          // Written by a backup after the listing, or really gone: the store decides.
          const info = await this.repo.store.head(packKey(packHex));
          if (info) this.stored.set(packHex, info.size);
          else {
            bad = this.problem('missing-pack', `pack ${packHex} holds indexed chunks but is missing from the store`, { pack: packHex });
            this.badPacks.set(packHex, bad);
          }
        }
        if (bad !== undefined) await this.badBlob(hex, bad);
      }
    }
  }

  private selectPacks(): string[] {
    const all = [...this.indexed.keys()].filter((hex) => this.stored.has(hex)).sort();
    const { part, subset } = this.opts;
    if (part) return all.filter((hex) => parseInt(hex.slice(0, 8), 16) % part.m === part.n - 1);
    if (subset === undefined || subset >= 1) return all;
    const want = Math.max(1, Math.ceil(subset * all.length));
    for (let i = all.length - 1; i > 0; i--) {
      const j = randomInt(i + 1);
      [all[i], all[j]] = [all[j], all[i]];
    }
    return all.slice(0, want).sort();
  }

  private async readData(): Promise<void> {
    const unreadable = new Map<string, number>();
    /** Packs read and parsed -> how many of their trailer's blobs the index places there. */
    const found = new Map<string, number>();
    for (const hex of this.selectPacks()) {
      const key = packKey(hex);
      let data: Buffer;
      try {
        data = await this.repo.store.get(key);
      } catch (err) {
        unreadable.set(hex, this.problem('pack-unreadable', `pack ${hex} cannot be read: ${(err as Error).message}`, { pack: hex }));
        continue;
      }
      this.packsRead++;
      if (!hash(data).equals(fromHex(hex))) this.problem('pack-hash', `pack ${hex} does not hash to its name: its bytes changed after it was written`, { pack: hex });
      let entries;
      try {
        entries = parsePack(data, key);
      } catch (err) {
        unreadable.set(hex, this.problem('pack-trailer', `pack ${hex}: ${(err as Error).message}`, { pack: hex }));
        continue;
      }
      found.set(hex, 0);
      for (let i = 0; i < entries.length; i += BATCH) {
        const slice = entries.slice(i, i + BATCH);
        const locs = await this.repo.index.locate(slice.map((e) => e.id));
        found.set(hex, found.get(hex)! + locs.filter((l) => l !== undefined && toHex(l.pack) === hex).length);
        for (let j = 0; j < slice.length; j++) {
          const e = slice[j];
          const idHex = toHex(e.id);
          const indexedHere = locs[j] !== undefined && toHex(locs[j]!.pack) === hex;
          const loc: Location = { pack: fromHex(hex), offset: e.offset, storedLength: e.storedLength, rawLength: e.rawLength, kind: e.kind, compressed: e.compressed };
          if (indexedHere && !sameLocation(locs[j]!, loc)) {
            await this.badBlob(idHex, this.problem('index-mismatch', `${e.kind === 'TREE' ? 'tree' : 'chunk'} ${idHex}: the index disagrees with the trailer of pack ${hex}`, { pack: hex, chunk: idHex }));
            continue;
          }
          this.blobsRead++;
          try {
            const raw = this.repo.inflateVerified(e.id, loc, data.subarray(e.offset, e.offset + e.storedLength));
            if (e.kind === 'TREE') decodeTree(raw, `tree ${idHex} in pack ${hex}`);
          } catch (err) {
            const unused = indexedHere ? '' : ' (an unused copy: no snapshot reads it from here)';
            const p = this.problem('blob-corrupt', `${(err as Error).message}${unused}`, { pack: hex, chunk: idHex });
            if (indexedHere) await this.badBlob(idHex, p);
          }
        }
      }
    }
    if (unreadable.size > 0) await this.blamePacks(unreadable);
    await this.unlisted(found);
  }

  /**
   * The other direction: an index entry that points into a pack read above, where its trailer
   * lists no such blob (a restore would read whatever bytes lie there). Counting the entries
   * per pack finds the packs that have such entries; only those are looked at blob by blob,
   * their trailers read again (marking every blob found took twice the time of the check).
   */
  private async unlisted(found: Map<string, number>): Promise<void> {
    if (found.size === 0) return;
    const indexed = new Map<string, number>();
    for await (const value of this.repo.index.db.values({ gte: 'chunk/', lt: 'chunk/\xff' })) {
      const packHex = toHex(decodeLocation(value).pack);
      if (found.has(packHex)) indexed.set(packHex, (indexed.get(packHex) ?? 0) + 1);
    }
    const listed = new Map<string, Set<string>>();
    for (const [packHex, n] of indexed) {
      if (n <= found.get(packHex)!) continue;
      const key = packKey(packHex);
      listed.set(packHex, new Set(parsePack(await this.repo.store.get(key), key).map((e) => toHex(e.id))));
    }
    if (listed.size === 0) return;
    for await (const [key, value] of this.repo.index.entries('chunk/')) {
      const packHex = toHex(decodeLocation(value).pack);
      const idHex = key.slice('chunk/'.length);
      if (listed.get(packHex)?.has(idHex) !== false) continue;
      await this.badBlob(idHex, this.problem('index-mismatch', `blob ${idHex} is indexed in pack ${packHex}, whose trailer does not list it`, { pack: packHex, chunk: idHex }));
    }
  }

  /** Every indexed blob of a pack that cannot be read is lost: one pass over chunk/ finds them. */
  private async blamePacks(packs: Map<string, number>): Promise<void> {
    for await (const [key, value] of this.repo.index.entries('chunk/')) {
      const p = packs.get(toHex(decodeLocation(value).pack));
      if (p !== undefined) await this.badBlob(key.slice('chunk/'.length), p);
    }
  }

  private async attribute(): Promise<void> {
    for await (const value of this.repo.index.db.values({ gte: 'snap/', lt: 'snap/\xff' })) {
      const s = JSON.parse(value.toString('utf8')) as Snapshot;
      await this.attributeTree(s.id, fromHex(s.rootTree), '/');
    }
  }

  /** Records which paths of snapshot `snap` reach a bad blob; returns whether any did. Clean trees are remembered and skipped. */
  private async attributeTree(snap: string, id: Buffer, path: string): Promise<boolean> {
    const hex = toHex(id);
    if ((await this.scratch.db.get(CLEAN + hex)) !== undefined) return false;
    const own = await this.scratch.db.get(BAD + hex);
    if (own !== undefined) this.record(own.readUInt32BE(0), snap, path);
    let nodes: Node[];
    try {
      nodes = await this.repo.readTree(id);
    } catch {
      return true;
    }
    let bad = own !== undefined;
    const child = (name: string) => (path === '/' ? `/${name}` : `${path}/${name}`);
    const files = nodes.filter((n) => n.type === 'FILE');
    const chunkIds = files.flatMap((n) => n.chunks.map((c) => BAD + toHex(c)));
    const hits = chunkIds.length > 0 ? await this.scratch.db.getMany(chunkIds) : [];
    let k = 0;
    for (const n of files) {
      for (let c = 0; c < n.chunks.length; c++, k++) {
        const hit = hits[k];
        if (hit === undefined) continue;
        this.record(hit.readUInt32BE(0), snap, child(n.name));
        bad = true;
      }
    }
    for (const n of nodes) if (n.type === 'DIR' && (await this.attributeTree(snap, n.subtree, child(n.name)))) bad = true;
    if (!bad) await this.scratch.db.put(CLEAN + hex, Buffer.alloc(0));
    return bad;
  }

  private record(problem: number, snap: string, path: string): void {
    const p = this.problems[problem];
    if (!p) return;
    if (!p.snapshots.has(snap)) {
      if (this.listedBytes + snap.length <= MAX_LISTED_BYTES) {
        p.snapshots.add(snap);
        this.listedBytes += snap.length;
      } else p.snapshotsCut = true;
    }
    if (p.files.has(path)) return;
    if (p.files.size < MAX_FILES_PER_PROBLEM && this.listedBytes + path.length <= MAX_LISTED_BYTES) {
      p.files.add(path);
      this.listedBytes += path.length;
    } else p.moreFiles++;
  }
}

function sameLocation(a: Location, b: Location): boolean {
  return a.offset === b.offset && a.storedLength === b.storedLength && a.rawLength === b.rawLength && a.kind === b.kind && a.compressed === b.compressed;
}

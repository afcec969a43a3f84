import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { DEFAULT_CHUNKER_PARAMS, validateChunkerParams, type ChunkerParams } from '../common/chunker.js';
import { BlobDecompressor, DEFAULT_LEVEL } from '../common/compression.js';
import { CairnError, Code, dataLoss, failedPrecondition, invalidArgument, notFound } from '../common/errors.js';
import { hash, ID_BYTES, isHexId, toHex } from '../common/hash.js';
import type { Node, Snapshot } from '../common/messages.js';
import { packKey, parsePack } from '../common/pack-format.js';
import { decodeTree, decodeTreeChunks, MAX_TREE_BLOB_BYTES } from '../common/tree.js';
import { IndexDb, packIndexOps, protectKey, snapKey, snapTimeKey, verifiedKey, type Batch, type Location } from './index-db.js';
import { decodeSegment } from './index-segment.js';
import type { ObjectStore } from './object-store.js';
import { PackWriter, type VerifiedBlob } from './pack-writer.js';
import { readBlobsByPack } from './blob-reader.js';
import { GcLock } from './gc-lock.js';
import { parseSnapshotRecord, SNAPSHOT_PREFIX, snapshotObjectKey } from './snapshot-record.js';

export const REPO_FORMAT_VERSION = 1;

export interface RepoConfig {
  version: number;
  id: string;
  chunker: ChunkerParams;
  packSize: number;
  compressionLevel: number;
  created: string;
}

export interface RepositoryOptions {
  name: string;
  store: ObjectStore;
  indexDir: string;
  log: Logger;
  packSize?: number;
  chunker?: ChunkerParams;
}

/** The record written to `snapshots/<id>`; its BLAKE3 is the snapshot id. Key order is fixed. */
export type SnapshotRecord = { version: number } & Omit<Snapshot, 'id' | 'protected'>;

/** Trees of one commit whose index lookups run together. */
const TREES_VERIFIED_AT_ONCE = 8;

/**
 * What a commit needs of a tree: its directories, and its files' chunk ids back to back
 * (copies, so keeping them pins no received message). The names of the files are left out:
 * only an error needs them, and then the tree is decoded again.
 */
export interface TreeRefs {
  dirs: Array<{ name: string; id: Buffer }>;
  chunks: Buffer;
}

/** A blob that passed verifyBlob; a tree comes with its refs, as verifying it decoded it anyway. */
export type ReceivedBlob = VerifiedBlob & { refs?: TreeRefs };

/** The refs of trees a commit's session uploaded, by hex id (see UploadedTrees in sessions.ts). */
export interface UploadedTreeSource {
  get(hex: string): TreeRefs | undefined;
}

function treeRefs(raw: Buffer, what: string, code: Code): TreeRefs {
  const { nodes, chunks } = decodeTreeChunks(raw, what, code);
  const dirs: TreeRefs['dirs'] = [];
  for (const n of nodes) if (n.type === 'DIR') dirs.push({ name: n.name, id: Buffer.from(n.subtree) });
  return { dirs, chunks };
}

function childPath(dir: string, name: string): string {
  return dir === '/' ? `/${name}` : `${dir}/${name}`;
}

interface TreeToVerify {
  id: Buffer;
  /** The directory it is, for error messages. */
  path: string;
}

interface LocatedTree extends TreeToVerify {
  loc: Location;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function validateName(kind: string, value: string): string {
  if (!NAME_RE.test(value)) {
    throw invalidArgument(`${kind} ${JSON.stringify(value)} is not valid: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit`);
  }
  // Names become keys (repos/<name>/, policies/<dataset>), and the folder store names its
  // temporary files <name>.tmp-<hex>: a name of that shape would read as one.
  if (value.includes('.tmp-')) throw invalidArgument(`${kind} ${JSON.stringify(value)} is not valid: '.tmp-' is reserved for the store's temporary files`);
  return value;
}

export function snapshotIndexKeys(s: Snapshot): string[] {
  return [snapTimeKey(s), `snapds/${s.dataset}/${s.time}/${s.id}`, `snapall/${s.time}/${s.id}`];
}

/**
 * One repository: an object-store prefix plus its LevelDB index. The server is its only
 * writer; everything written follows packs -> index segment -> LevelDB -> snapshot object.
 */
export class Repository {
  readonly decompressor = new BlobDecompressor();
  readonly writer: PackWriter;
  /** Backups hold it shared from lookup to pin, prune exclusive while it unindexes (prune.ts). */
  readonly gcLock = new GcLock();
  /** Uploaded data blobs inflate into this to be hashed, then the bytes are dropped (see verifyBlob). */
  private verifyScratch: Buffer | undefined;

  private constructor(
    readonly name: string,
    readonly store: ObjectStore,
    readonly index: IndexDb,
    readonly config: RepoConfig,
    readonly log: Logger,
  ) {
    this.writer = new PackWriter(store, index, { packSize: config.packSize, uploadConcurrency: 2, maxQueuedPacks: 2, segmentEvery: 64 });
  }

  static async open(opts: RepositoryOptions): Promise<Repository> {
    const config = await loadOrInitConfig(opts);
    const index = await IndexDb.open(opts.indexDir);
    // Our caller holds the writer lease (or, rebuilding the index, runs with the server stopped)
    // and has written nothing yet: every temporary under the repository is a killed writer's.
    const unfinished = await opts.store.deleteUnfinished('');
    if (unfinished > 0) opts.log.info({ repository: opts.name, unfinished }, 'removed the temporary files of writes a crash interrupted');
    const repo = new Repository(opts.name, opts.store, index, config, opts.log);
    const marker = await index.getJson<{ repositoryId: string }>('meta/repository');
    if (marker?.repositoryId !== config.id) {
      opts.log.warn({ repository: opts.name }, 'index is empty or belongs to another repository: rebuilding it from the object store');
      await repo.rebuildIndex();
    } else {
      await repo.reconcileSnapshots();
    }
    // Sessions do not survive a restart, so neither do their pins.
    await index.deletePrefix('pin/');
    return repo;
  }

  async close(): Promise<void> {
    await this.writer.flush().catch(() => undefined);
    await this.index.close();
  }

  get maxBlobRaw(): number {
    return this.config.chunker.maxSize;
  }

  /** Which of `ids` the repository holds (indexed or waiting in a pack being written). */
  async present(ids: Buffer[]): Promise<boolean[]> {
    const locs = await this.index.locate(ids);
    return locs.map((l, i) => l !== undefined || this.writer.isPending(toHex(ids[i])));
  }

  /**
   * Checks a blob a client sent: size limits first (before inflating anything), then
   * decompression into exactly raw_length bytes, then the hash. Nothing unverified is stored.
   */
  verifyBlob(blob: { id: Buffer; kind: string; compression: string; rawLength: number; data: Buffer }): ReceivedBlob {
    if (blob.id.length !== ID_BYTES) throw invalidArgument(`blob id must be ${ID_BYTES} bytes, got ${blob.id.length}`);
    const hex = toHex(blob.id);
    const limit = blob.kind === 'TREE' ? MAX_TREE_BLOB_BYTES : this.maxBlobRaw;
    if (blob.kind !== 'TREE' && blob.kind !== 'DATA') throw invalidArgument(`blob ${hex}: unknown kind ${blob.kind}`);
    if (!(blob.rawLength > 0) && blob.data.length > 0) throw invalidArgument(`blob ${hex}: raw_length must be set`);
    // An empty file has no chunk; an empty DATA blob would share its id with the empty tree
    // (every empty directory's) and, found present, keep that tree from ever being stored.
    if (blob.kind === 'DATA' && !(blob.rawLength > 0)) throw invalidArgument(`blob ${hex}: an empty DATA blob is not a chunk (empty files have none)`);
    if (blob.rawLength > limit) {
      throw new CairnError(Code.INVALID_ARGUMENT, `blob ${hex}: raw length ${blob.rawLength} passes the limit of ${limit} bytes for ${blob.kind} blobs`);
    }
    let raw: Buffer;
    if (blob.compression === 'ZSTD') {
      // Only the hash of the inflated bytes is needed, so one reused buffer does for every
      // data blob; trees keep their own, they may be 64 MiB and are rare.
      const into = blob.kind === 'DATA' ? (this.verifyScratch ??= Buffer.allocUnsafeSlow(this.maxBlobRaw)) : undefined;
      raw = this.decompressor.decompress(blob.data, blob.rawLength, `blob ${hex}`, into);
    } else if (blob.compression === 'NONE') {
      if (blob.data.length !== blob.rawLength) throw invalidArgument(`blob ${hex}: ${blob.data.length} bytes but raw_length says ${blob.rawLength}`);
      raw = blob.data;
    } else {
      throw invalidArgument(`blob ${hex}: unknown compression ${blob.compression}`);
    }
    if (!hash(raw).equals(blob.id)) throw invalidArgument(`blob ${hex}: content does not hash to its id; nothing stored`);
    const refs = blob.kind === 'TREE' ? treeRefs(raw, `tree ${hex}`, Code.INVALID_ARGUMENT) : undefined;
    // The id is a view into the whole received message: copy it, or every indexed-but-not-yet-
    // segmented entry would pin its megabyte message in memory.
    return { id: Buffer.from(blob.id), kind: blob.kind, compressed: blob.compression === 'ZSTD', rawLength: blob.rawLength, data: blob.data, refs };
  }

  async locateOrThrow(id: Buffer, what: string): Promise<Location> {
    const [loc] = await this.index.locate([id]);
    if (!loc) throw notFound(`${what} ${toHex(id)} is not in repository ${this.name}`);
    return loc;
  }

  inflateVerified(id: Buffer, loc: Location, stored: Buffer): Buffer {
    const where = `${loc.kind === 'TREE' ? 'tree' : 'chunk'} ${toHex(id)} in pack ${toHex(loc.pack)}`;
    let raw: Buffer;
    try {
      raw = loc.compressed ? this.decompressor.decompress(stored, loc.rawLength, where) : stored;
    } catch (err) {
      throw dataLoss(`${where} is corrupt: ${(err as Error).message}`);
    }
    if (!hash(raw).equals(id)) throw dataLoss(`${where} is corrupt: its content no longer hashes to its id`);
    return raw;
  }

  /**
   * A blob's kind says which pack it was written to, not what its bytes are: a file that is a
   * copy of a tree's encoding (a copied tree cache, say) has that tree's id, and whichever came
   * first is the one stored. So a tree may be read from a blob stored as data, and a file's
   * chunk may be a blob stored as a tree; the id vouches for the bytes either way.
   */
  async readTree(id: Buffer): Promise<Node[]> {
    const loc = await this.locateOrThrow(id, 'tree');
    const raw = await this.readTreeRaw(id, loc);
    try {
      return decodeTree(raw, `tree ${toHex(id)}`);
    } catch (err) {
      if (loc.kind !== 'TREE') throw invalidArgument(`${toHex(id)} is a data chunk, not a tree`);
      throw err;
    }
  }

  private async decodeTreeAt(id: Buffer, loc: Location): Promise<Node[]> {
    return decodeTree(await this.readTreeRaw(id, loc), `tree ${toHex(id)}`);
  }

  private async readTreeRaw(id: Buffer, loc: Location): Promise<Buffer> {
    return this.inflateVerified(id, loc, await this.store.getRange(packKey(toHex(loc.pack)), loc.offset, loc.storedLength));
  }

  readStored(ids: Buffer[]) {
    return readBlobsByPack(this, ids);
  }

  /**
   * Refuses a commit whose tree references anything the repository lacks. Subtrees verified
   * by an earlier commit are skipped, so an incremental commit costs only its new trees.
   * Each level of the tree is checked a few directories at a time (one after another, their
   * index and pack reads left the CPU idle half the time while the client waited), with at
   * most MAX_TREE_BLOB_BYTES of inflated trees in memory at once, as one at a time held.
   */
  async verifyComplete(root: Buffer, uploaded?: UploadedTreeSource): Promise<number> {
    const newlyVerified: string[] = [];
    let level: TreeToVerify[] = [{ id: root, path: '/' }];
    while (level.length > 0) {
      const next: TreeToVerify[] = [];
      for (let i = 0; i < level.length; i += TREES_VERIFIED_AT_ONCE) {
        const found = await Promise.all(level.slice(i, i + TREES_VERIFIED_AT_ONCE).map((t) => this.unverifiedTree(t)));
        const todo = found.filter((f): f is LocatedTree => f !== undefined);
        for (let j = 0; j < todo.length; ) {
          let k = j + 1;
          let bytes = todo[j].loc.rawLength;
          while (k < todo.length && bytes + todo[k].loc.rawLength <= MAX_TREE_BLOB_BYTES) bytes += todo[k++].loc.rawLength;
          for (const subtrees of await Promise.all(todo.slice(j, k).map((t) => this.checkTree(t, uploaded)))) for (const t of subtrees) next.push(t);
          j = k;
        }
        for (const t of todo) newlyVerified.push(toHex(t.id));
      }
      level = next;
    }
    await this.index.putMarkers(newlyVerified.map(verifiedKey));
    return newlyVerified.length;
  }

  /** Where a commit's tree is stored, or undefined when an earlier commit verified it. */
  private async unverifiedTree({ id, path }: TreeToVerify): Promise<LocatedTree | undefined> {
    const hex = toHex(id);
    if (await this.index.has(verifiedKey(hex))) return undefined;
    const [loc] = await this.index.locate([id]);
    if (!loc) throw failedPrecondition(`commit references unknown tree ${hex} (directory ${path}); upload it first`);
    return { id, path, loc };
  }

  /**
   * Checks that every chunk a tree's files name is stored; returns its subtrees. For a tree
   * this session uploaded, the refs kept from its upload stand in for reading, inflating and
   * decoding it again (decoding was the larger part): it was located above, so it is stored,
   * and its id names its bytes. Only a missing chunk sends it the long way, to name the file.
   */
  private async checkTree(tree: LocatedTree, uploaded?: UploadedTreeSource): Promise<TreeToVerify[]> {
    const { id, path, loc } = tree;
    const hex = toHex(id);
    // A data blob that does not decode is the client's mistake, a stored tree that does not is damage.
    const refs = uploaded?.get(hex) ?? treeRefs(await this.readTreeRaw(id, loc), `tree ${hex}`, loc.kind === 'TREE' ? Code.DATA_LOSS : Code.FAILED_PRECONDITION);
    const missing = await this.firstMissing(refs.chunks);
    if (missing < 0) return refs.dirs.map((d) => ({ id: d.id, path: childPath(path, d.name) }));
    let before = missing;
    for (const n of await this.decodeTreeAt(id, loc)) {
      if (n.type !== 'FILE') continue;
      if (before < n.chunks.length) {
        throw failedPrecondition(`commit references unknown chunk ${toHex(n.chunks[before])} (file ${childPath(path, n.name)}); upload it first`);
      }
      before -= n.chunks.length;
    }
    throw failedPrecondition(`commit references unknown chunk ${toHex(refs.chunks.subarray(missing * ID_BYTES, (missing + 1) * ID_BYTES))} (directory ${path}); upload it first`);
  }

  /** The index of the first id in `chunks` (ids back to back) that is not stored (of either kind, see readTree), or -1; looked up 1,000 at a time. */
  private async firstMissing(chunks: Buffer): Promise<number> {
    const count = chunks.length / ID_BYTES;
    for (let i = 0; i < count; i += 1000) {
      const ids: Buffer[] = [];
      for (let j = i; j < Math.min(count, i + 1000); j++) ids.push(chunks.subarray(j * ID_BYTES, (j + 1) * ID_BYTES));
      const locs = await this.index.locate(ids);
      // A tree blob may stand for a chunk, but not one larger than any chunk can be: the restore would refuse it.
      const missing = locs.findIndex((l) => l === undefined || l.rawLength > this.maxBlobRaw);
      if (missing >= 0) return i + missing;
    }
    return -1;
  }

  async writeSnapshot(record: SnapshotRecord): Promise<Snapshot> {
    const json = Buffer.from(JSON.stringify(record));
    const id = toHex(hash(json));
    await this.store.put(snapshotObjectKey(id), json);
    const snapshot = recordToSnapshot(id, record, false);
    await this.indexSnapshot(snapshot);
    return snapshot;
  }

  private async indexSnapshot(s: Snapshot): Promise<void> {
    const ops: Batch = [{ type: 'put', key: snapKey(s.id), value: Buffer.from(JSON.stringify(s)) }];
    for (const key of snapshotIndexKeys(s)) ops.push({ type: 'put', key, value: Buffer.alloc(0) });
    await this.index.batch(ops);
  }

  async snapshotById(id: string): Promise<Snapshot | undefined> {
    const s = await this.index.getJson<Snapshot>(snapKey(id));
    if (!s) return undefined;
    s.protected = await this.index.has(protectKey(id));
    return s;
  }

  /** Resolves a full id, a unique prefix, or "latest" (optionally narrowed by dataset/host/tag). */
  async resolveSnapshot(ref: string, filter: { dataset?: string; host?: string; tag?: string } = {}): Promise<Snapshot> {
    if (ref === 'latest') {
      for await (const s of this.listSnapshots({ dataset: filter.dataset, host: filter.host, tag: filter.tag, limit: 1 })) return s;
      const scope = [filter.dataset && `dataset ${filter.dataset}`, filter.host && `host ${filter.host}`, filter.tag && `tag ${filter.tag}`].filter(Boolean).join(', ');
      throw notFound(`no snapshot${scope ? ` for ${scope}` : ''} in repository ${this.name}`);
    }
    if (!/^[0-9a-f]{1,64}$/.test(ref)) throw invalidArgument(`snapshot reference ${JSON.stringify(ref)} is not an id, an id prefix or "latest"`);
    if (isHexId(ref)) {
      const s = await this.snapshotById(ref);
      if (!s) throw notFound(`snapshot ${ref} does not exist in repository ${this.name}`);
      return s;
    }
    const candidates: string[] = [];
    for await (const key of this.index.keys(`snap/${ref}`, { limit: 11 })) candidates.push(key.slice('snap/'.length));
    if (candidates.length === 0) throw notFound(`no snapshot id starts with ${ref}`);
    if (candidates.length > 1) {
      throw invalidArgument(`snapshot prefix ${ref} is ambiguous: it matches ${candidates.slice(0, 10).join(', ')}${candidates.length > 10 ? ', ...' : ''}`);
    }
    return (await this.snapshotById(candidates[0]))!;
  }

  /** Newest first, streamed from the most specific LevelDB range the filter allows. */
  async *listSnapshots(f: { dataset?: string; host?: string; tag?: string; since?: string; until?: string; limit?: number }): AsyncGenerator<Snapshot> {
    const prefix = f.dataset && f.host ? `snaptime/${f.dataset}/${f.host}/` : f.dataset ? `snapds/${f.dataset}/` : 'snapall/';
    const gte = f.since ? prefix + f.since : undefined;
    const lt = f.until ? prefix + f.until : undefined;
    let n = 0;
    let ids: string[] = [];
    const emit = async function* (this: Repository): AsyncGenerator<Snapshot> {
      // One getMany per batch: awaited single gets are ~10x slower than batched ones.
      const [snaps, marks] = await Promise.all([this.index.db.getMany(ids.map(snapKey)), this.index.db.getMany(ids.map(protectKey))]);
      ids = [];
      for (let i = 0; i < snaps.length; i++) {
        const raw = snaps[i];
        if (!raw) continue;
        const s = JSON.parse(raw.toString('utf8')) as Snapshot;
        s.protected = marks[i] !== undefined;
        if (f.host && s.host !== f.host) continue;
        if (f.tag && !s.tags.includes(f.tag)) continue;
        yield s;
        if (f.limit && ++n >= f.limit) return;
      }
    };
    // A small first batch keeps "latest" (limit 1) to one read.
    let batch = f.limit && f.limit < 64 ? f.limit : 64;
    for await (const key of this.index.keys(prefix, { reverse: true, gte, lt })) {
      ids.push(key.slice(key.lastIndexOf('/') + 1));
      if (ids.length >= batch) {
        yield* emit.call(this);
        if (f.limit && n >= f.limit) return;
        batch = 256;
      }
    }
    if (ids.length > 0) yield* emit.call(this);
  }

  /**
   * Brings LevelDB back in step with the object store after a crash between writing a
   * snapshot object and indexing it: the object is the commit point, the index follows it.
   */
  async reconcileSnapshots(): Promise<number> {
    let added = 0;
    for await (const o of this.store.list(SNAPSHOT_PREFIX)) {
      const id = o.key.slice(SNAPSHOT_PREFIX.length);
      if (!isHexId(id) || (await this.index.has(snapKey(id)))) continue;
      await this.indexSnapshotObject(id);
      added++;
    }
    if (added > 0) this.log.info({ repository: this.name, added }, 'indexed snapshots found in the store but missing from the index');
    return added;
  }

  private async indexSnapshotObject(id: string): Promise<void> {
    const data = await this.store.get(snapshotObjectKey(id));
    if (toHex(hash(data)) !== id) {
      this.log.error({ snapshot: id }, 'snapshot object does not hash to its name: skipped');
      return;
    }
    let record: SnapshotRecord;
    try {
      record = parseSnapshotRecord(data, `snapshot object ${id}`);
    } catch (err) {
      this.log.error({ snapshot: id, err: (err as Error).message }, 'malformed snapshot object: skipped');
      return;
    }
    await this.indexSnapshot(recordToSnapshot(id, record, false));
  }

  /** Recreates LevelDB from index segments, then from the trailers of packs no segment names. */
  async rebuildIndex(): Promise<{ segments: number; packsFromTrailers: number; snapshots: number }> {
    await this.index.db.clear();
    const known = new Set<string>();
    let segments = 0;
    for await (const o of this.store.list('index/')) {
      try {
        const packs = decodeSegment(await this.store.get(o.key), o.key);
        const ops: Batch = [];
        const indexed: string[] = [];
        for (const p of packs) {
          const packHex = toHex(p.id);
          if (!(await this.store.head(packKey(packHex)))) continue;
          indexed.push(packHex);
          // A loop, not push(...): a pack of small files holds more entries than a call takes arguments.
          for (const op of packIndexOps(p)) ops.push(op);
        }
        await this.index.batch(ops);
        // Only now: a segment that fails half-way leaves its packs to the trailers below.
        for (const packHex of indexed) known.add(packHex);
        segments++;
      } catch (err) {
        this.log.warn({ segment: o.key, err: (err as Error).message }, 'unreadable index segment: falling back to pack trailers');
      }
    }
    let packsFromTrailers = 0;
    for await (const o of this.store.list('packs/')) {
      const packHex = o.key.slice(o.key.lastIndexOf('/') + 1);
      if (known.has(packHex) || !isHexId(packHex)) continue;
      try {
        const data = await this.store.get(o.key);
        const entries = parsePack(data, o.key);
        const kind = entries[0]?.kind ?? 'DATA';
        await this.index.batch([...packIndexOps({ id: Buffer.from(packHex, 'hex'), size: data.length, kind, entries })]);
        packsFromTrailers++;
      } catch (err) {
        this.log.error({ pack: o.key, err: (err as Error).message }, 'unreadable pack skipped during rebuild');
      }
    }
    let snapshots = 0;
    for await (const o of this.store.list(SNAPSHOT_PREFIX)) {
      const id = o.key.slice(SNAPSHOT_PREFIX.length);
      if (!isHexId(id)) continue;
      await this.indexSnapshotObject(id);
      snapshots++;
    }
    const protectedIds: string[] = [];
    for await (const o of this.store.list('protected/')) protectedIds.push(protectKey(o.key.slice('protected/'.length)));
    await this.index.putMarkers(protectedIds);
    for await (const o of this.store.list('policies/')) {
      try {
        await this.index.putJson(`policy/${o.key.slice('policies/'.length)}`, JSON.parse((await this.store.get(o.key)).toString('utf8')));
      } catch (err) {
        this.log.error({ policy: o.key, err: (err as Error).message }, 'unreadable retention policy skipped during rebuild');
      }
    }
    await this.index.putJson('meta/repository', { repositoryId: this.config.id });
    this.log.info({ repository: this.name, segments, packsFromTrailers, snapshots }, 'index rebuilt');
    return { segments, packsFromTrailers, snapshots };
  }
}

function recordToSnapshot(id: string, r: SnapshotRecord, isProtected: boolean): Snapshot {
  return {
    id,
    dataset: r.dataset,
    host: r.host,
    paths: r.paths,
    tags: r.tags,
    time: r.time,
    parent: r.parent,
    rootTree: r.rootTree,
    summary: r.summary,
    clientVersion: r.clientVersion,
    protected: isProtected,
  };
}

async function loadOrInitConfig(opts: RepositoryOptions): Promise<RepoConfig> {
  try {
    const config = JSON.parse((await opts.store.get('config')).toString('utf8')) as RepoConfig;
    if (config.version !== REPO_FORMAT_VERSION) {
      throw failedPrecondition(`repository ${opts.name} has format version ${config.version}; this server reads version ${REPO_FORMAT_VERSION}`);
    }
    return config;
  } catch (err) {
    if (!(err instanceof CairnError) || err.code !== Code.NOT_FOUND) throw err;
  }
  const chunker = opts.chunker ?? DEFAULT_CHUNKER_PARAMS;
  validateChunkerParams(chunker);
  const config: RepoConfig = {
    version: REPO_FORMAT_VERSION,
    id: randomBytes(16).toString('hex'),
    chunker,
    packSize: opts.packSize ?? 16 * 1024 * 1024,
    compressionLevel: DEFAULT_LEVEL,
    created: new Date().toISOString(),
  };
  // Two servers initialising at once must agree on one config: the conditional write decides.
  if (!(await opts.store.putIfAbsent('config', Buffer.from(JSON.stringify(config, null, 2))))) {
    return loadOrInitConfig(opts);
  }
  opts.log.info({ repository: opts.name, id: config.id, store: opts.store.description }, 'initialised new repository');
  return config;
}

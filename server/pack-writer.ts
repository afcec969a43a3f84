import fastq from 'fastq';
import type { queueAsPromised } from 'fastq';
import { IncrementalHash, toHex } from '../common/hash.js';
import { encodeTrailer, ENTRY_BYTES, FOOTER_BYTES, packKey, type PackEntry } from '../common/pack-format.js';
import type { BlobKind } from '../common/messages.js';
import type { ObjectStore, ObjectWriter } from './object-store.js';
import { encodeSegment, segmentKey, type SegmentPack } from './index-segment.js';
import { packIndexOps, type Batch, type IndexDb } from './index-db.js';
import { toCairnError } from '../common/errors.js';

export interface VerifiedBlob {
  id: Buffer;
  kind: BlobKind;
  compressed: boolean;
  rawLength: number;
  data: Buffer;
}

export interface PackWriterOptions {
  packSize: number;
  uploadConcurrency: number;
  /** Sealed packs waiting for upload before add() makes callers wait: bounds memory. */
  maxQueuedPacks: number;
  /** Uploaded packs that trigger an index segment without waiting for a commit. */
  segmentEvery: number;
}

/** Entries indexed since the last segment that trigger a new one, whatever the pack count. */
const SEGMENT_MAX_ENTRIES = 20_000;
/** LevelDB puts per batch: one batch per segment would hold every entry's key and value at once. */
const BATCH_OPS = 5_000;

/**
 * A blob that would carry a pack past the target size plus this goes to a new pack instead (only
 * a big tree can): packs stay as large as when they were built in a buffer of this headroom,
 * and check --read-data reads a pack whole. A data blob is at most the chunker's 4 MiB maximum.
 */
const PACK_HEADROOM = 4 * 1024 * 1024 + 64 * 1024;

interface OpenPack {
  kind: BlobKind;
  entries: PackEntry[];
  /** Bytes appended so far: the blobs, and after sealing the trailer too. */
  size: number;
  /** Of every byte appended: the pack's id once the trailer is in. */
  hasher: IncrementalHash;
  writer: Promise<ObjectWriter>;
  /** The appends in order; rejects with the first failure, after which nothing more is written. */
  written: Promise<void>;
}

/**
 * Appends verified blobs into packs (data and trees apart), uploads sealed packs with
 * bounded concurrency, and makes them findable in the crash-safe order:
 * pack objects, then an index segment naming them, then the LevelDB entries.
 * Until a blob's entry is in LevelDB it is "pending": known to dedup, not yet readable.
 *
 * Each pack is streamed into an ObjectWriter and hashed as its blobs arrive, so on the folder
 * store the memory for packs is two 1 MiB write buffers per pack being written (and up to four
 * pairs kept for the next) whatever --pack-size is (packs
 * built in buffers held 20 MiB each, ~65 MiB of the server's peak in a first snapshot; at
 * 128 MiB packs it would be half a gigabyte). Stores that buffer (S3) hold at most one open
 * pack per kind plus maxQueuedPacks sealed ones.
 */
export class PackWriter {
  private readonly open = new Map<BlobKind, OpenPack>();
  private readonly pending = new Set<string>();
  private uploaded: SegmentPack[] = [];
  private uploadedEntries = 0;
  private readonly queue: queueAsPromised<OpenPack>;
  private queued = 0;
  private waiters: Array<() => void> = [];
  private failure: Error | undefined;
  private indexing: Promise<void> = Promise.resolve();
  /** Ids of the packs stored since watchStored() (prune.ts): undefined when nobody watches. */
  private stored: Set<string> | undefined;

  constructor(
    private readonly store: ObjectStore,
    private readonly index: IndexDb,
    private readonly opts: PackWriterOptions,
  ) {
    this.queue = fastq.promise(this, this.upload, opts.uploadConcurrency);
  }

  /**
   * From now on, records the id of every pack this writer stores, until unwatchStored(). A
   * pack's key is the hash of its bytes, so a backup that uploads the same blobs in the same
   * order stores the very pack prune has condemned, under the same key: prune asks this set
   * before it deletes one (prune.ts, deletePacks).
   */
  watchStored(): ReadonlySet<string> {
    this.stored = new Set();
    return this.stored;
  }

  unwatchStored(): void {
    this.stored = undefined;
  }

  isPending(idHex: string): boolean {
    return this.pending.has(idHex);
  }

  /**
   * Adds a blob; resolves when the writer can take more (the caller should stop reading until
   * then). The bytes are written or copied before this returns, so the caller may reuse `blob.data`.
   */
  async add(blob: VerifiedBlob): Promise<void> {
    const hex = toHex(blob.id);
    if (this.pending.has(hex)) return;
    this.pending.add(hex);
    let pack = this.open.get(blob.kind);
    if (pack && pack.size + blob.data.length + (pack.entries.length + 1) * ENTRY_BYTES + FOOTER_BYTES > this.opts.packSize + PACK_HEADROOM) {
      this.seal(blob.kind);
      pack = undefined;
    }
    if (!pack) {
      const writer = this.store.openWriter('packs');
      pack = { kind: blob.kind, entries: [], size: 0, hasher: new IncrementalHash(), writer, written: writer.then(() => undefined) };
      this.open.set(blob.kind, pack);
    }
    pack.entries.push({ id: blob.id, offset: pack.size, storedLength: blob.data.length, rawLength: blob.rawLength, kind: blob.kind, compressed: blob.compressed });
    const written = append(pack, blob.data);
    if (pack.size >= this.opts.packSize) this.seal(blob.kind);
    // Waiting for our own write bounds the bytes in flight; a failure is the upload's to report.
    // A pack that failed is sealed at once: its upload forgets its blobs (so FindMissing asks
    // for them again) and reports the error, and the next blob starts a pack that can succeed.
    const ok = await written.then(() => true, () => false);
    if (!ok && this.open.get(blob.kind) === pack) this.seal(blob.kind);
    while (this.queued >= this.opts.maxQueuedPacks) {
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  private seal(kind: BlobKind): void {
    const pack = this.open.get(kind);
    if (!pack) return;
    this.open.delete(kind);
    // Handled here at once so a failure waiting for its upload is not an unhandled rejection.
    append(pack, encodeTrailer(pack.entries)).catch(() => undefined);
    this.queued++;
    this.queue.push(pack).catch(() => undefined);
  }

  private async upload(pack: OpenPack): Promise<void> {
    const id = pack.hasher.digest();
    let writer: ObjectWriter | undefined;
    try {
      writer = await pack.writer;
      await pack.written;
      await writer.commit(packKey(toHex(id)));
      this.stored?.add(toHex(id));
      this.uploaded.push({ id, size: pack.size, kind: pack.kind, entries: pack.entries });
      this.uploadedEntries += pack.entries.length;
    } catch (err) {
      // A temporary left behind would hold the space a full disk needs back.
      await writer?.abort().catch(() => undefined);
      // The blobs of a lost pack must be uploadable again: forget them and report at the next flush.
      for (const e of pack.entries) this.pending.delete(toHex(e.id));
      this.failure ??= toCairnError(err);
    } finally {
      this.queued--;
      const waiters = this.waiters;
      this.waiters = [];
      for (const w of waiters) w();
    }
    // By entries too: a pack of small files holds tens of thousands, and every one waiting for
    // its segment costs memory (measured: 1M small files grew the server past 1 GiB).
    if (this.uploaded.length >= this.opts.segmentEvery || this.uploadedEntries >= SEGMENT_MAX_ENTRIES) {
      this.indexing = this.indexing.then(() => this.writeIndex());
    }
  }

  /** Makes every blob added so far durable and indexed (a commit calls this first). */
  async flush(): Promise<void> {
    this.seal('DATA');
    this.seal('TREE');
    await this.queue.drained();
    this.indexing = this.indexing.then(() => this.writeIndex());
    await this.indexing;
    const failure = this.failure;
    this.failure = undefined;
    if (failure) throw failure;
  }

  private async writeIndex(): Promise<void> {
    if (this.uploaded.length === 0) return;
    const packs = this.uploaded;
    this.uploaded = [];
    this.uploadedEntries = 0;
    try {
      const segment = encodeSegment(packs);
      await this.store.put(segmentKey(segment.id), segment.data);
      let ops: Batch = [];
      for (const p of packs) {
        for (const op of packIndexOps(p)) {
          ops.push(op);
          if (ops.length >= BATCH_OPS) {
            await this.index.batch(ops);
            ops = [];
          }
        }
      }
      // Synced: a commit writes its snapshot object next, and a power loss must not leave a
      // snapshot whose packs the index lost (prune would delete them as orphans).
      await this.index.batch(ops, { sync: true });
    } catch (err) {
      // Packs without an index entry are unreferenced: garbage collection removes them.
      this.failure ??= toCairnError(err);
    }
    // Indexed blobs are found through LevelDB now; lost ones must be uploadable again.
    for (const p of packs) for (const e of p.entries) this.pending.delete(toHex(e.id));
  }
}

/** Hashes `data` now and writes it after what the pack already has; returns the pack's writes so far. */
function append(pack: OpenPack, data: Buffer): Promise<void> {
  pack.hasher.update(data);
  pack.size += data.length;
  pack.written = pack.written.then(async () => (await pack.writer).write(data));
  return pack.written;
}

import fastq from 'fastq';
import type { queueAsPromised } from 'fastq';
import { hash, toHex } from '../common/hash.js';
import { ENTRY_BYTES, FOOTER_BYTES, packKey, writeTrailer, type PackEntry } from '../common/pack-format.js';
import type { BlobKind } from '../common/messages.js';
import type { ObjectStore } from './object-store.js';
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
 * Room a pack buffer keeps beyond the target pack size: the blob that crosses the target and
 * the trailer must still fit. A data blob is at most the chunker's 4 MiB maximum.
 */
const PACK_HEADROOM = 4 * 1024 * 1024 + 64 * 1024;

interface OpenPack {
  buf: Buffer;
  entries: PackEntry[];
  size: number;
}

interface SealedPack {
  kind: BlobKind;
  buf: Buffer;
  size: number;
  entries: PackEntry[];
}

/**
 * Appends verified blobs into packs (data and trees apart), uploads sealed packs with
 * bounded concurrency, and makes them findable in the crash-safe order:
 * pack objects, then an index segment naming them, then the LevelDB entries.
 * Until a blob's entry is in LevelDB it is "pending": known to dedup, not yet readable.
 *
 * Blobs are copied into pack buffers that are reused from pack to pack. Building each pack
 * from the received messages and concatenating them made a gigabyte of fresh buffers per
 * gigabyte uploaded, and freeing those cost the server more CPU (in garbage collection) than
 * verifying the blobs did. The buffers in use are bounded: one open pack per kind plus
 * maxQueuedPacks sealed ones.
 */
export class PackWriter {
  private readonly open = new Map<BlobKind, OpenPack>();
  private readonly pending = new Set<string>();
  private uploaded: SegmentPack[] = [];
  private uploadedEntries = 0;
  private readonly queue: queueAsPromised<SealedPack>;
  private queued = 0;
  private waiters: Array<() => void> = [];
  private failure: Error | undefined;
  private indexing: Promise<void> = Promise.resolve();
  private readonly freeBuffers: Buffer[] = [];
  private readonly bufferSize: number;

  constructor(
    private readonly store: ObjectStore,
    private readonly index: IndexDb,
    private readonly opts: PackWriterOptions,
  ) {
    this.queue = fastq.promise(this, this.upload, opts.uploadConcurrency);
    this.bufferSize = opts.packSize + PACK_HEADROOM;
  }

  isPending(idHex: string): boolean {
    return this.pending.has(idHex);
  }

  /**
   * Adds a blob; resolves when the writer can take more (the caller should stop reading until
   * then). The bytes are copied before this returns, so the caller may reuse `blob.data`.
   */
  async add(blob: VerifiedBlob): Promise<void> {
    const hex = toHex(blob.id);
    if (this.pending.has(hex)) return;
    this.pending.add(hex);
    let pack = this.open.get(blob.kind);
    if (pack && !fits(pack, blob.data.length)) {
      this.seal(blob.kind);
      pack = undefined;
    }
    if (!pack) {
      pack = { buf: this.takeBuffer(blob.data.length), entries: [], size: 0 };
      this.open.set(blob.kind, pack);
    }
    pack.entries.push({ id: blob.id, offset: pack.size, storedLength: blob.data.length, rawLength: blob.rawLength, kind: blob.kind, compressed: blob.compressed });
    blob.data.copy(pack.buf, pack.size);
    pack.size += blob.data.length;
    if (pack.size >= this.opts.packSize) this.seal(blob.kind);
    while (this.queued >= this.opts.maxQueuedPacks) {
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  /** A pooled buffer, or a one-off one for a blob larger than the pool's (a big tree). */
  private takeBuffer(blobLength: number): Buffer {
    const need = blobLength + ENTRY_BYTES + FOOTER_BYTES;
    if (need > this.bufferSize) return Buffer.allocUnsafeSlow(need);
    return this.freeBuffers.pop() ?? Buffer.allocUnsafeSlow(this.bufferSize);
  }

  private giveBuffer(buf: Buffer): void {
    // Two open packs (data, trees) and the sealed ones waiting: more would only sit there.
    if (buf.length === this.bufferSize && this.freeBuffers.length < 2 + this.opts.maxQueuedPacks) this.freeBuffers.push(buf);
  }

  private seal(kind: BlobKind): void {
    const pack = this.open.get(kind);
    if (!pack || pack.entries.length === 0) return;
    this.open.delete(kind);
    const size = writeTrailer(pack.buf, pack.size, pack.entries);
    this.queued++;
    this.queue.push({ kind, buf: pack.buf, size, entries: pack.entries }).catch(() => undefined);
  }

  private async upload(sealed: SealedPack): Promise<void> {
    const data = sealed.buf.subarray(0, sealed.size);
    const id = hash(data);
    try {
      await this.store.put(packKey(toHex(id)), data);
      this.uploaded.push({ id, size: sealed.size, kind: sealed.kind, entries: sealed.entries });
      this.uploadedEntries += sealed.entries.length;
    } catch (err) {
      // The blobs of a lost pack must be uploadable again: forget them and report at the next flush.
      for (const e of sealed.entries) this.pending.delete(toHex(e.id));
      this.failure ??= toCairnError(err);
    } finally {
      this.giveBuffer(sealed.buf);
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
      await this.index.batch(ops);
    } catch (err) {
      // Packs without an index entry are unreferenced: garbage collection removes them.
      this.failure ??= toCairnError(err);
    }
    // Indexed blobs are found through LevelDB now; lost ones must be uploadable again.
    for (const p of packs) for (const e of p.entries) this.pending.delete(toHex(e.id));
  }
}

/** Whether one more blob and the trailer that will then describe it still fit the buffer. */
function fits(pack: OpenPack, blobLength: number): boolean {
  return pack.size + blobLength + (pack.entries.length + 1) * ENTRY_BYTES + FOOTER_BYTES <= pack.buf.length;
}

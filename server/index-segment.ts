import { hash, ID_BYTES, toHex } from '../common/hash.js';
import { CairnError, Code } from '../common/errors.js';
import { ENTRY_BYTES, encodeTrailer, FOOTER_BYTES, parseFooter, parseTrailer, type PackEntry } from '../common/pack-format.js';
import type { BlobKind } from '../common/messages.js';

/**
 * An index segment lists the entries of the packs written since the previous segment, so
 * the LevelDB index can be rebuilt by reading a few segments instead of every pack trailer.
 *
 *   magic "CAIRNIDX" 8 | version u32 | pack count u32 |
 *   per pack: pack id 32 | pack size u64 | kind u8 | entry count u32 |
 *             that pack's trailer + footer, byte for byte as stored at the end of the pack
 *
 * Reusing the pack's own trailer keeps one entry format and one parser for both.
 * Key: index/<BLAKE3 of the segment>.
 */
const SEGMENT_MAGIC = Buffer.from('CAIRNIDX', 'ascii');
const SEGMENT_VERSION = 1;
const PACK_HEADER_BYTES = ID_BYTES + 8 + 1 + 4;

export interface SegmentPack {
  id: Buffer;
  size: number;
  kind: BlobKind;
  entries: PackEntry[];
}

export function segmentKey(idHex: string): string {
  return `index/${idHex}`;
}

export function encodeSegment(packs: SegmentPack[]): { id: string; data: Buffer } {
  const head = Buffer.allocUnsafe(16);
  SEGMENT_MAGIC.copy(head, 0);
  head.writeUInt32BE(SEGMENT_VERSION, 8);
  head.writeUInt32BE(packs.length, 12);
  const parts: Buffer[] = [head];
  for (const p of packs) {
    const ph = Buffer.allocUnsafe(PACK_HEADER_BYTES);
    p.id.copy(ph, 0);
    ph.writeBigUInt64BE(BigInt(p.size), ID_BYTES);
    ph.writeUInt8(p.kind === 'TREE' ? 1 : 0, ID_BYTES + 8);
    ph.writeUInt32BE(p.entries.length, ID_BYTES + 9);
    parts.push(ph, encodeTrailer(p.entries));
  }
  const data = Buffer.concat(parts);
  return { id: toHex(hash(data)), data };
}

/** Parses an untrusted segment; each embedded trailer is checked exactly like a pack's own. */
export function decodeSegment(data: Buffer, what: string): SegmentPack[] {
  if (data.length < 16 || !data.subarray(0, 8).equals(SEGMENT_MAGIC)) throw new CairnError(Code.DATA_LOSS, `${what}: not an index segment`);
  if (data.readUInt32BE(8) !== SEGMENT_VERSION) throw new CairnError(Code.DATA_LOSS, `${what}: unsupported segment version`);
  const count = data.readUInt32BE(12);
  const packs: SegmentPack[] = [];
  let o = 16;
  for (let i = 0; i < count; i++) {
    if (o + PACK_HEADER_BYTES > data.length) throw new CairnError(Code.DATA_LOSS, `${what}: truncated at pack ${i}`);
    const id = Buffer.from(data.subarray(o, o + ID_BYTES));
    const size = Number(data.readBigUInt64BE(o + ID_BYTES));
    const kind: BlobKind = data.readUInt8(o + ID_BYTES + 8) === 1 ? 'TREE' : 'DATA';
    const n = data.readUInt32BE(o + ID_BYTES + 9);
    o += PACK_HEADER_BYTES;
    const trailerLength = n * ENTRY_BYTES;
    if (o + trailerLength + FOOTER_BYTES > data.length) throw new CairnError(Code.DATA_LOSS, `${what}: truncated trailer of pack ${toHex(id)}`);
    const packWhat = `${what} pack ${toHex(id)}`;
    const footer = parseFooter(data.subarray(o + trailerLength, o + trailerLength + FOOTER_BYTES), size, packWhat);
    if (footer.entryCount !== n) throw new CairnError(Code.DATA_LOSS, `${packWhat}: entry count disagrees with its footer`);
    packs.push({ id, size, kind, entries: parseTrailer(data.subarray(o, o + trailerLength), footer, size, packWhat) });
    o += trailerLength + FOOTER_BYTES;
  }
  if (o !== data.length) throw new CairnError(Code.DATA_LOSS, `${what}: trailing bytes after the last pack`);
  return packs;
}

/**
 * One pack's record in a segment kept as its bytes (header, trailer, footer), so prune can
 * carry packs from old segments into new ones without decoding every entry into objects.
 */
export interface SegmentRecord {
  id: Buffer;
  entries: number;
  bytes: Buffer;
}

/** Splits an untrusted segment into records; each trailer is checked against its footer's hash. */
export function splitSegment(data: Buffer, what: string): SegmentRecord[] {
  if (data.length < 16 || !data.subarray(0, 8).equals(SEGMENT_MAGIC)) throw new CairnError(Code.DATA_LOSS, `${what}: not an index segment`);
  if (data.readUInt32BE(8) !== SEGMENT_VERSION) throw new CairnError(Code.DATA_LOSS, `${what}: unsupported segment version`);
  const count = data.readUInt32BE(12);
  const records: SegmentRecord[] = [];
  let o = 16;
  for (let i = 0; i < count; i++) {
    if (o + PACK_HEADER_BYTES > data.length) throw new CairnError(Code.DATA_LOSS, `${what}: truncated at pack ${i}`);
    const id = Buffer.from(data.subarray(o, o + ID_BYTES));
    const size = Number(data.readBigUInt64BE(o + ID_BYTES));
    const n = data.readUInt32BE(o + ID_BYTES + 9);
    const end = o + PACK_HEADER_BYTES + n * ENTRY_BYTES + FOOTER_BYTES;
    if (end > data.length) throw new CairnError(Code.DATA_LOSS, `${what}: truncated trailer of pack ${toHex(id)}`);
    checkTail(data.subarray(o + PACK_HEADER_BYTES, end), n, size, `${what} pack ${toHex(id)}`);
    records.push({ id, entries: n, bytes: Buffer.from(data.subarray(o, end)) });
    o = end;
  }
  if (o !== data.length) throw new CairnError(Code.DATA_LOSS, `${what}: trailing bytes after the last pack`);
  return records;
}

/** A record from a pack's own last bytes (trailer and footer), for a pack no segment lists. */
export function recordFromPackTail(id: Buffer, size: number, kind: BlobKind, tail: Buffer, what: string): SegmentRecord {
  const n = (tail.length - FOOTER_BYTES) / ENTRY_BYTES;
  checkTail(tail, n, size, what);
  const header = Buffer.allocUnsafe(PACK_HEADER_BYTES);
  id.copy(header, 0);
  header.writeBigUInt64BE(BigInt(size), ID_BYTES);
  header.writeUInt8(kind === 'TREE' ? 1 : 0, ID_BYTES + 8);
  header.writeUInt32BE(n, ID_BYTES + 9);
  return { id, entries: n, bytes: Buffer.concat([header, tail]) };
}

function checkTail(tail: Buffer, n: number, size: number, what: string): void {
  const footer = parseFooter(tail.subarray(tail.length - FOOTER_BYTES), size, what);
  if (footer.entryCount !== n || !hash(tail.subarray(0, footer.trailerLength)).equals(footer.trailerHash)) {
    throw new CairnError(Code.DATA_LOSS, `${what}: trailer does not match its footer`);
  }
}

export function joinSegment(records: SegmentRecord[]): { id: string; data: Buffer } {
  const head = Buffer.allocUnsafe(16);
  SEGMENT_MAGIC.copy(head, 0);
  head.writeUInt32BE(SEGMENT_VERSION, 8);
  head.writeUInt32BE(records.length, 12);
  const data = Buffer.concat([head, ...records.map((r) => r.bytes)]);
  return { id: toHex(hash(data)), data };
}

import { hash, ID_BYTES, toHex } from './hash.js';
import { CairnError, Code } from './errors.js';
import type { BlobKind } from './messages.js';

/**
 * The pack: blobs appended back to back, then a trailer listing them, then a fixed footer.
 *
 *   [blob 0][blob 1]...[blob n-1][trailer: n entries][footer]
 *
 * Trailer entry (ENTRY_BYTES = 50, big-endian):
 *   id 32 | offset u64 | stored length u32 | raw length u32 | kind u8 (0 data, 1 tree) | compression u8 (0 none, 1 zstd)
 * Footer (FOOTER_BYTES = 52):
 *   magic "CAIRNPAK" 8 | version u32 | entry count u32 | trailer length u32 | BLAKE3 of trailer 32
 *
 * The pack's id is the BLAKE3 of all its bytes; its key is packs/<first two hex>/<id>.
 * Because every pack describes itself, the index can always be rebuilt from packs alone.
 */
export const PACK_MAGIC = Buffer.from('CAIRNPAK', 'ascii');
export const PACK_VERSION = 1;
export const ENTRY_BYTES = 50;
export const FOOTER_BYTES = 52;

export interface PackEntry {
  id: Buffer;
  offset: number;
  storedLength: number;
  rawLength: number;
  kind: BlobKind;
  compressed: boolean;
}

export function packKey(packIdHex: string): string {
  return `packs/${packIdHex.slice(0, 2)}/${packIdHex}`;
}

/** The trailer and footer describing `entries`, as bytes to append after the blobs. */
export function encodeTrailer(entries: PackEntry[]): Buffer {
  const trailerLength = entries.length * ENTRY_BYTES;
  const buf = Buffer.allocUnsafe(trailerLength + FOOTER_BYTES);
  entries.forEach((e, i) => {
    const o = i * ENTRY_BYTES;
    e.id.copy(buf, o);
    buf.writeBigUInt64BE(BigInt(e.offset), o + 32);
    buf.writeUInt32BE(e.storedLength, o + 40);
    buf.writeUInt32BE(e.rawLength, o + 44);
    buf.writeUInt8(e.kind === 'TREE' ? 1 : 0, o + 48);
    buf.writeUInt8(e.compressed ? 1 : 0, o + 49);
  });
  const f = trailerLength;
  PACK_MAGIC.copy(buf, f);
  buf.writeUInt32BE(PACK_VERSION, f + 8);
  buf.writeUInt32BE(entries.length, f + 12);
  buf.writeUInt32BE(trailerLength, f + 16);
  hash(buf.subarray(0, f)).copy(buf, f + 20);
  return buf;
}

export interface ParsedFooter {
  entryCount: number;
  trailerLength: number;
  trailerHash: Buffer;
}

export function parseFooter(footer: Buffer, packSize: number, what: string): ParsedFooter {
  if (footer.length !== FOOTER_BYTES || !footer.subarray(0, 8).equals(PACK_MAGIC)) {
    throw new CairnError(Code.DATA_LOSS, `${what}: no pack footer (bad magic)`);
  }
  const version = footer.readUInt32BE(8);
  if (version !== PACK_VERSION) throw new CairnError(Code.DATA_LOSS, `${what}: unsupported pack version ${version}`);
  const entryCount = footer.readUInt32BE(12);
  const trailerLength = footer.readUInt32BE(16);
  if (trailerLength !== entryCount * ENTRY_BYTES || trailerLength + FOOTER_BYTES > packSize) {
    throw new CairnError(Code.DATA_LOSS, `${what}: trailer length ${trailerLength} does not fit ${entryCount} entries in a ${packSize}-byte pack`);
  }
  return { entryCount, trailerLength, trailerHash: footer.subarray(20, 52) };
}

/** Parses an untrusted trailer; every entry must lie inside the data area, without overlaps. */
export function parseTrailer(trailer: Buffer, footer: ParsedFooter, packSize: number, what: string): PackEntry[] {
  if (trailer.length !== footer.trailerLength || !hash(trailer).equals(footer.trailerHash)) {
    throw new CairnError(Code.DATA_LOSS, `${what}: trailer checksum mismatch`);
  }
  const dataEnd = packSize - FOOTER_BYTES - footer.trailerLength;
  const entries: PackEntry[] = [];
  let expectedOffset = 0;
  for (let i = 0; i < footer.entryCount; i++) {
    const o = i * ENTRY_BYTES;
    const offsetBig = trailer.readBigUInt64BE(o + 32);
    const e: PackEntry = {
      id: Buffer.from(trailer.subarray(o, o + ID_BYTES)),
      offset: Number(offsetBig),
      storedLength: trailer.readUInt32BE(o + 40),
      rawLength: trailer.readUInt32BE(o + 44),
      kind: trailer.readUInt8(o + 48) === 1 ? 'TREE' : 'DATA',
      compressed: trailer.readUInt8(o + 49) === 1,
    };
    const kindByte = trailer.readUInt8(o + 48);
    const compByte = trailer.readUInt8(o + 49);
    if (kindByte > 1 || compByte > 1 || offsetBig !== BigInt(expectedOffset) || e.offset + e.storedLength > dataEnd) {
      throw new CairnError(Code.DATA_LOSS, `${what}: trailer entry ${i} (${toHex(e.id)}) is malformed`);
    }
    expectedOffset = e.offset + e.storedLength;
    entries.push(e);
  }
  if (expectedOffset !== dataEnd) throw new CairnError(Code.DATA_LOSS, `${what}: blobs do not fill the data area`);
  return entries;
}

/** Parses a whole pack held in memory (rebuild-index and check read packs this way). */
export function parsePack(pack: Buffer, what: string): PackEntry[] {
  if (pack.length < FOOTER_BYTES) throw new CairnError(Code.DATA_LOSS, `${what}: ${pack.length} bytes is too short to be a pack`);
  const footer = parseFooter(pack.subarray(pack.length - FOOTER_BYTES), pack.length, what);
  const trailerStart = pack.length - FOOTER_BYTES - footer.trailerLength;
  return parseTrailer(pack.subarray(trailerStart, pack.length - FOOTER_BYTES), footer, pack.length, what);
}

import protobuf from 'protobufjs';
import { ID_BYTES } from './hash.js';
import { CairnError, Code } from './errors.js';
import type { Node } from './messages.js';

/**
 * The tree blob: one directory's entries as the protobuf `Tree` message (proto/cairn.proto),
 * nodes sorted by name and encoded with fields in number order, so the same directory always
 * encodes to the same bytes and therefore the same id.
 */

export const MAX_TREE_ENTRIES = 1_000_000;
/**
 * Tree blobs are not cut by the chunker; this bounds what one directory may cost the server.
 * It also bounds the raw bytes of all trees in one Upload message: the server inflates and
 * decodes each to verify it, so a small message of highly compressible trees could otherwise
 * cost it gigabytes.
 */
export const MAX_TREE_BLOB_BYTES = 64 * 1024 * 1024;
const MAX_NAME_LENGTH = 4096;
const NODE_TYPES = new Set(['FILE', 'DIR', 'SYMLINK']);

/** A path inside a snapshot ('/'-separated, no leading '/'): `dir`'s child `name`; '' is the root. */
export function joinPath(dir: string, name: string): string {
  return dir === '' ? name : `${dir}/${name}`;
}

export function compareNames(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Why a name may not be used as a path component, or undefined when it may. */
export function badName(name: string): string | undefined {
  if (name === '') return 'empty name';
  if (name === '.' || name === '..') return `name ${JSON.stringify(name)} is a relative path component`;
  if (name.includes('/')) return `name ${JSON.stringify(name)} contains '/'`;
  if (name.includes('\0')) return `name ${JSON.stringify(name)} contains NUL`;
  if (name.length > MAX_NAME_LENGTH) return `name longer than ${MAX_NAME_LENGTH} characters`;
  return undefined;
}

/** Checks what every reader of a tree relies on; throws with the first problem found. */
export function validateNodes(nodes: Node[], what: string, code: Code = Code.INVALID_ARGUMENT): void {
  if (nodes.length > MAX_TREE_ENTRIES) {
    throw new CairnError(Code.RESOURCE_EXHAUSTED, `${what}: ${nodes.length} entries pass the limit of ${MAX_TREE_ENTRIES} per tree`);
  }
  let prev: string | undefined;
  for (const n of nodes) {
    const bad = badName(n.name);
    if (bad) throw new CairnError(code, `${what}: ${bad}`);
    if (prev !== undefined && compareNames(prev, n.name) >= 0) {
      throw new CairnError(code, `${what}: entries not sorted or duplicated at ${JSON.stringify(n.name)}`);
    }
    prev = n.name;
    if (!NODE_TYPES.has(n.type)) throw new CairnError(code, `${what}: ${JSON.stringify(n.name)} has unknown type ${String(n.type)}`);
    if (n.type === 'DIR' && n.subtree.length !== ID_BYTES) {
      throw new CairnError(code, `${what}: directory ${JSON.stringify(n.name)} has no valid subtree id`);
    }
    if (n.type === 'FILE' && n.chunks.some((c) => c.length !== ID_BYTES)) {
      throw new CairnError(code, `${what}: file ${JSON.stringify(n.name)} has a malformed chunk id`);
    }
  }
}

/**
 * Encodes a tree exactly as protobufjs encodes `cairn.v1.Tree` built with fromObject: every
 * Node field in number order, defaults included (a zero, an empty string or empty bytes is
 * still written; only an empty `chunks` list writes nothing), except `links`, written only
 * above 1 so that trees from before it keep their ids. Tree ids are hashes of these bytes, so
 * they must never change: test/tree-codec.test.ts compares with protobufjs.
 * Written by hand because the generic path (parsing every 64-bit decimal into a Long, a
 * message object per node) was a tenth of an unchanged snapshot's CPU.
 */
export function encodeTree(nodes: Node[]): Buffer {
  validateNodes(nodes, 'tree');
  return encodeNodes(nodes);
}

/** encodeTree without the checks, for nodes already checked (a page of a stored tree). */
export function encodeNodes(nodes: Node[]): Buffer {
  const w = new TreeWriter();
  for (const n of nodes) {
    const start = w.beginMessage(1);
    w.string(1, n.name);
    w.tag(2, WIRE_VARINT);
    w.varint32(NODE_TYPE_NUMBERS[n.type]);
    w.tag(3, WIRE_VARINT);
    w.varint32(n.mode);
    w.tag(4, WIRE_VARINT);
    w.varint64(n.mtimeNs);
    w.tag(5, WIRE_VARINT);
    w.varint64(n.size);
    for (const c of n.chunks) w.bytes(6, c);
    w.bytes(7, n.subtree);
    w.string(8, n.target);
    w.tag(9, WIRE_VARINT);
    w.varint64(n.inode);
    w.tag(10, WIRE_VARINT);
    w.varint64(n.ctimeNs);
    // Only above 1, unlike the fields before it: trees written before it existed keep their ids.
    if (n.links > 1) {
      w.tag(11, WIRE_VARINT);
      w.varint32(n.links);
    }
    w.endMessage(start);
  }
  return w.finish();
}

const WIRE_VARINT = 0;
const WIRE_LEN = 2;
const NODE_TYPE_NUMBERS: Record<string, number> = { FILE: 0, DIR: 1, SYMLINK: 2 };
const NODE_TYPE_NAMES = ['FILE', 'DIR', 'SYMLINK'] as const;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
/** Bytes reserved for a nested message's length, moved down once the length is known. */
const MAX_LEN_VARINT = 5;

class TreeWriter {
  private buf = Buffer.allocUnsafe(64 * 1024);
  private pos = 0;

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const bigger = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(bigger, 0, 0, this.pos);
    this.buf = bigger;
  }

  tag(field: number, wire: number): void {
    this.varint32((field << 3) | wire);
  }

  varint32(v: number): void {
    this.room(5);
    v >>>= 0;
    while (v > 0x7f) {
      this.buf[this.pos++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    this.buf[this.pos++] = v;
  }

  /** A 64-bit integer given in decimal; negative values as ten-byte two's complement. */
  varint64(decimal: string): void {
    const n = Number(decimal);
    if (Number.isSafeInteger(n) && n >= 0) {
      if (n <= 0xffffffff) return this.varint32(n);
      return this.split64(n % 0x100000000, Math.floor(n / 0x100000000));
    }
    const b = BigInt.asUintN(64, BigInt(decimal));
    this.split64(Number(b & 0xffffffffn), Number(b >> 32n));
  }

  private split64(lo: number, hi: number): void {
    this.room(10);
    while (hi > 0 || lo > 0x7f) {
      this.buf[this.pos++] = (lo & 0x7f) | 0x80;
      lo = ((lo >>> 7) | (hi << 25)) >>> 0;
      hi >>>= 7;
    }
    this.buf[this.pos++] = lo;
  }

  bytes(field: number, b: Uint8Array): void {
    this.tag(field, WIRE_LEN);
    this.varint32(b.length);
    this.room(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }

  string(field: number, s: string): void {
    // Node writes a lone surrogate as U+FFFD, protobufjs as its own three bytes: names
    // read from a file system are always well formed, but the bytes must match anyway.
    if (LONE_SURROGATE.test(s)) return this.bytes(field, utf8Like(s));
    const len = Buffer.byteLength(s);
    this.tag(field, WIRE_LEN);
    this.varint32(len);
    this.room(len);
    this.pos += this.buf.write(s, this.pos);
  }

  beginMessage(field: number): number {
    this.tag(field, WIRE_LEN);
    this.room(MAX_LEN_VARINT);
    this.pos += MAX_LEN_VARINT;
    return this.pos;
  }

  endMessage(start: number): void {
    const len = this.pos - start;
    let lenBytes = 1;
    for (let v = len >>> 7; v > 0; v >>>= 7) lenBytes++;
    const lenAt = start - MAX_LEN_VARINT;
    this.buf.copyWithin(lenAt + lenBytes, start, this.pos);
    this.pos = lenAt;
    this.varint32(len);
    this.pos += len;
  }

  finish(): Buffer {
    const out = Buffer.allocUnsafeSlow(this.pos);
    this.buf.copy(out, 0, 0, this.pos);
    return out;
  }
}

function utf8Like(s: string): Uint8Array {
  const out = new Uint8Array(protobuf.util.utf8.length(s));
  protobuf.util.utf8.write(s, out, 0);
  return out;
}

/** Reads an untrusted tree; every structural problem throws (decodeTree turns it into a CairnError). */
class TreeReader {
  pos: number;
  constructor(
    readonly buf: Buffer,
    start: number,
    readonly end: number,
  ) {
    this.pos = start;
  }

  varint32(): number {
    let v = 0;
    for (let shift = 0; shift < 35; shift += 7) {
      if (this.pos >= this.end) throw new Error('truncated varint');
      const b = this.buf[this.pos++];
      v += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) {
        if (v > 0xffffffff) throw new Error('varint does not fit 32 bits');
        return v;
      }
    }
    throw new Error('varint longer than 5 bytes');
  }

  /** A 64-bit varint as a decimal string; `signed` reads it as int64. */
  varint64(signed: boolean): string {
    let lo = 0;
    let hi = 0;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new Error('truncated varint');
      const b = this.buf[this.pos++];
      if (i < 4) lo |= (b & 0x7f) << (i * 7);
      else if (i === 4) {
        lo |= (b & 0x0f) << 28;
        hi |= (b & 0x7f) >> 4;
      } else hi |= (b & 0x7f) << (i * 7 - 32);
      if (b < 0x80) {
        lo >>>= 0;
        hi >>>= 0;
        if (hi === 0) return String(lo);
        if (hi < 0x200000) return String(hi * 0x100000000 + lo);
        const v = (BigInt(hi) << 32n) | BigInt(lo);
        return String(signed ? BigInt.asIntN(64, v) : v);
      }
    }
    throw new Error('varint longer than 10 bytes');
  }

  length(): number {
    const len = this.varint32();
    if (this.pos + len > this.end) throw new Error('length runs past the end');
    return len;
  }

  /** A length-delimited field's bytes, as a view of the tree. */
  bytes(): Buffer {
    const len = this.length();
    this.pos += len;
    return this.buf.subarray(this.pos - len, this.pos);
  }

  skip(wire: number): void {
    if (wire === WIRE_VARINT) this.varint64(false);
    else if (wire === WIRE_LEN) this.bytes();
    else if (wire === 1 || wire === 5) {
      this.pos += wire === 1 ? 8 : 4;
      if (this.pos > this.end) throw new Error('truncated fixed field');
    } else throw new Error(`unsupported wire type ${wire}`);
  }
}

/**
 * With `chunkStarts`, a file's 32-byte chunk ids are not made into Buffers: where each starts
 * in the tree is pushed there instead (ids of other lengths still land in `chunks`, for
 * validateNodes to refuse).
 */
function decodeNode(r: TreeReader, chunkStarts?: number[]): Node {
  const n = emptyNode('', 'FILE');
  const mark = chunkStarts?.length ?? 0;
  while (r.pos < r.end) {
    const tag = r.varint32();
    const field = tag >>> 3;
    const wire = tag & 7;
    const expected = field === 1 || (field >= 6 && field <= 8) ? WIRE_LEN : field >= 2 && field <= 11 ? WIRE_VARINT : -1;
    if (expected === -1) {
      r.skip(wire);
      continue;
    }
    if (wire !== expected) throw new Error(`field ${field} has wire type ${wire}`);
    switch (field) {
      case 1:
        n.name = r.bytes().toString('utf8');
        break;
      case 8:
        n.target = r.bytes().toString('utf8');
        break;
      case 2: {
        const t = r.varint32();
        n.type = (NODE_TYPE_NAMES[t] ?? String(t)) as Node['type'];
        break;
      }
      case 3:
        n.mode = r.varint32();
        break;
      case 4:
        n.mtimeNs = r.varint64(true);
        break;
      case 5:
        n.size = r.varint64(false);
        break;
      case 6: {
        if (chunkStarts === undefined) {
          n.chunks.push(r.bytes());
          break;
        }
        const len = r.length();
        if (len === ID_BYTES) chunkStarts.push(r.pos);
        else n.chunks.push(r.buf.subarray(r.pos, r.pos + len));
        r.pos += len;
        break;
      }
      case 7:
        n.subtree = r.bytes();
        break;
      case 9:
        n.inode = r.varint64(false);
        break;
      case 10:
        n.ctimeNs = r.varint64(true);
        break;
      case 11:
        n.links = r.varint32();
        break;
    }
  }
  if (chunkStarts !== undefined && n.type !== 'FILE') chunkStarts.length = mark;
  return n;
}

/**
 * Calls `fn` with the bounds of each top-level `nodes` field of an encoded Tree. Each node is
 * held to its own length, so a counting pass and a decoding pass see exactly the same nodes.
 */
function forEachNode(data: Buffer, fn: (start: number, end: number) => void): void {
  const r = new TreeReader(data, 0, data.length);
  while (r.pos < r.end) {
    const tag = r.varint32();
    if (tag >>> 3 !== 1) {
      r.skip(tag & 7);
      continue;
    }
    if ((tag & 7) !== WIRE_LEN) throw new Error(`node field with wire type ${tag & 7}`);
    const len = r.length();
    fn(r.pos, r.pos + len);
    r.pos += len;
  }
}

/** Decodes untrusted bytes; any malformation is a CairnError with `code`, never a crash. */
export function decodeTree(data: Uint8Array, what: string, code: Code = Code.DATA_LOSS): Node[] {
  const nodes = decodeNodes(data, what, code);
  validateNodes(nodes, what, code);
  return nodes;
}

/**
 * decodeTree for a reader that wants the files' chunk ids together rather than per file: the
 * same checks, but the ids are copied into one buffer, in tree order, instead of becoming an
 * object each (a tree naming two million chunks was ~200 MiB of them). The nodes come back
 * with their files' `chunks` empty.
 */
export function decodeTreeChunks(data: Uint8Array, what: string, code: Code = Code.DATA_LOSS): { nodes: Node[]; chunks: Buffer } {
  const buf = asBuffer(data);
  const starts: number[] = [];
  const nodes = readNodes(buf, what, code, starts);
  validateNodes(nodes, what, code);
  const chunks = Buffer.allocUnsafeSlow(starts.length * ID_BYTES);
  for (let i = 0; i < starts.length; i++) buf.copy(chunks, i * ID_BYTES, starts[i], starts[i] + ID_BYTES);
  return { nodes, chunks };
}

function asBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

/**
 * decodeTree without the tree rules (order, names), for a page of a tree whose reader checks
 * the whole; the structure is still checked.
 */
export function decodeNodes(data: Uint8Array, what: string, code: Code = Code.DATA_LOSS): Node[] {
  return readNodes(asBuffer(data), what, code);
}

function readNodes(buf: Buffer, what: string, code: Code, chunkStarts?: number[]): Node[] {
  const nodes: Node[] = [];
  try {
    // Count before decoding: a 64 MiB blob of five-byte nodes holds 13 million entries, and
    // decoding those into objects would take gigabytes before the limit could be checked.
    let count = 0;
    forEachNode(buf, () => count++);
    if (count > MAX_TREE_ENTRIES) throw new CairnError(Code.RESOURCE_EXHAUSTED, `${what}: ${count} entries pass the limit of ${MAX_TREE_ENTRIES} per tree`);
    forEachNode(buf, (start, end) => nodes.push(decodeNode(new TreeReader(buf, start, end), chunkStarts)));
  } catch (err) {
    if (err instanceof CairnError) throw err;
    throw new CairnError(code, `${what}: not a valid tree (${(err as Error).message})`);
  }
  return nodes;
}

export function emptyNode(name: string, type: Node['type']): Node {
  return { name, type, mode: 0, mtimeNs: '0', size: '0', chunks: [], subtree: Buffer.alloc(0), target: '', inode: '0', ctimeNs: '0', links: 0 };
}

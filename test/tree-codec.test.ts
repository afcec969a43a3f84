import { describe, expect, it } from 'vitest';
import { CairnError, Code } from '../common/errors.js';
import type { Node } from '../common/messages.js';
import { CONVERSION, protoRoot } from '../common/proto.js';
import { decodeTree, decodeTreeChunks, emptyNode, encodeTree } from '../common/tree.js';

/**
 * Tree ids are hashes of the encoded bytes, so the hand-written codec in common/tree.ts must
 * produce exactly what protobufjs produces for `cairn.v1.Tree` from proto/cairn.proto (the
 * encoding every existing snapshot was written with), and read back what protobufjs reads.
 */
const TreeType = protoRoot.lookupType('cairn.v1.Tree');

/** `links` is written only above 1 (common/tree.ts), so it is left out of the object below that. */
function reference(nodes: Node[]): Buffer {
  const asWritten = nodes.map(({ links, ...n }) => (links > 1 ? { ...n, links } : n));
  return Buffer.from(TreeType.encode(TreeType.fromObject({ nodes: asWritten })).finish());
}

function referenceDecode(bytes: Buffer): Node[] {
  const obj = TreeType.toObject(TreeType.decode(bytes), CONVERSION) as { nodes: Node[] };
  return obj.nodes.map((n) => ({ ...n, chunks: n.chunks.map((c) => Buffer.from(c)), subtree: Buffer.from(n.subtree) }));
}

/** xorshift32: the same cases every run. */
function rng(seed: number): () => number {
  let x = seed;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

const INT64S = ['0', '1', '127', '128', '16383', '16384', '4294967295', '4294967296', '9007199254740991', '9007199254740992', '1700000000123456789', '9223372036854775807', '-1', '-5', '-9223372036854775808'];
const UINT64S = ['0', '1', '300', '4294967295', '4294967296', '9007199254740993', '18446744073709551615'];
const NAMES = ['a', 'é', '日本語', '😀 emoji', 'x'.repeat(300), 'sp ace', 'lone \uD800 high', 'lone \uDC00 low'];

function randomNodes(r: () => number): Node[] {
  const pick = <T>(xs: T[]) => xs[Math.floor(r() * xs.length)];
  const count = 1 + Math.floor(r() * 20);
  const names = new Set<string>();
  while (names.size < count) names.add(`${pick(NAMES)}-${Math.floor(r() * 1e6)}`);
  return [...names].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)).map((name) => {
    const type = pick(['FILE', 'DIR', 'SYMLINK'] as const);
    const n = emptyNode(name, type);
    n.mode = pick([0, 0o644, 0o755, 0o7777]);
    n.mtimeNs = pick(INT64S);
    n.ctimeNs = pick(INT64S);
    n.size = pick(UINT64S);
    n.inode = pick(UINT64S);
    n.links = pick([0, 0, 0, 1, 2, 300, 4294967295]);
    if (type === 'FILE') n.chunks = Array.from({ length: Math.floor(r() * 4) }, (_, i) => Buffer.alloc(32, i + 1));
    if (type === 'DIR') n.subtree = Buffer.alloc(32, 0xab);
    if (type === 'SYMLINK') n.target = pick(['/abs/target', '../rel', 'ünï', '']);
    return n;
  });
}

describe('tree codec', () => {
  it('encodes byte for byte as protobufjs does, over edge values and random trees', () => {
    const r = rng(42);
    for (let i = 0; i < 500; i++) {
      const nodes = randomNodes(r);
      expect(encodeTree(nodes).equals(reference(nodes))).toBe(true);
    }
    expect(encodeTree([]).length).toBe(0);
  });

  it('writes the link count only above 1, so a tree from before the field keeps its bytes and id', () => {
    // An empty file's node as every version wrote it: fields 1-10, defaults included.
    const before = '0a130a016610001800200028003a00420048005000';
    expect(encodeTree([emptyNode('f', 'FILE')]).toString('hex')).toBe(before);
    expect(encodeTree([{ ...emptyNode('f', 'FILE'), links: 1 }]).toString('hex')).toBe(before);
    // Field 11 appended (tag 0x58), the node two bytes longer.
    const linked = encodeTree([{ ...emptyNode('f', 'FILE'), links: 2 }]);
    expect(linked.toString('hex')).toBe('0a150a016610001800200028003a004200480050005802');
    expect(decodeTree(linked, 'tree')[0].links).toBe(2);
    expect(decodeTree(Buffer.from(before, 'hex'), 'tree')[0].links).toBe(0);
  });

  it('encodes a node larger than 16 KiB (a multi-byte length prefix) the same way', () => {
    const n = emptyNode('big', 'FILE');
    n.chunks = Array.from({ length: 2000 }, (_, i) => Buffer.alloc(32, i & 0xff));
    expect(encodeTree([n]).equals(reference([n]))).toBe(true);
  });

  it('decodes what protobufjs decodes, values included', () => {
    const r = rng(7);
    for (let i = 0; i < 300; i++) {
      const nodes = randomNodes(r).filter((n) => !/[\uD800-\uDFFF]/.test(n.name));
      const bytes = reference(nodes);
      expect(decodeTree(bytes, 'tree')).toEqual(referenceDecode(bytes));
    }
  });

  it('skips unknown fields and refuses a known field with the wrong wire type', () => {
    const n = emptyNode('f', 'FILE');
    const good = encodeTree([n]);
    // Field 15 (varint) appended inside the node: the node length grows by two bytes.
    const withUnknown = Buffer.concat([Buffer.from([0x0a, good[1] + 2]), good.subarray(2), Buffer.from([0x78, 0x01])]);
    expect(decodeTree(withUnknown, 'tree')).toEqual(decodeTree(good, 'tree'));
    // The name (field 1) sent as a varint.
    const badWire = Buffer.from([0x0a, 0x02, 0x08, 0x01]);
    expect(() => decodeTree(badWire, 'tree')).toThrow(CairnError);
    try {
      decodeTree(badWire, 'tree', Code.INVALID_ARGUMENT);
    } catch (err) {
      expect((err as CairnError).code).toBe(Code.INVALID_ARGUMENT);
      expect((err as CairnError).message).toMatch(/field 1 has wire type 0/);
    }
  });

  it('decodeTreeChunks gives the files\' chunk ids in tree order, skipping ids on other nodes, and refuses what decodeTree refuses', () => {
    const r = rng(99);
    for (let i = 0; i < 200; i++) {
      const nodes = randomNodes(r).filter((n) => !/[\uD800-\uDFFF]/.test(n.name));
      nodes.forEach((n, k) => n.chunks.forEach((c, j) => c.writeUInt16BE(k * 16 + j)));
      // A directory carrying chunk ids: not a file's, so not the tree's.
      const dir = nodes.find((n) => n.type === 'DIR');
      if (dir) dir.chunks = [Buffer.alloc(32, 0xee)];
      const bytes = encodeTree(nodes);
      const { nodes: got, chunks } = decodeTreeChunks(bytes, 'tree');
      const files = nodes.filter((n) => n.type === 'FILE');
      expect(chunks.equals(Buffer.concat(files.flatMap((n) => n.chunks)))).toBe(true);
      expect(got.map((n) => [n.name, n.type, n.size, n.subtree.toString('hex')])).toEqual(nodes.map((n) => [n.name, n.type, n.size, n.subtree.toString('hex')]));
      expect(got.every((n) => n.type !== 'FILE' || n.chunks.length === 0)).toBe(true);
    }
    const short = emptyNode('f', 'FILE');
    short.chunks = [Buffer.alloc(32, 1), Buffer.alloc(31, 2)];
    expect(() => decodeTreeChunks(encodeTree([short]), 'tree', Code.INVALID_ARGUMENT)).toThrow('tree: file "f" has a malformed chunk id');
    const unsorted = [emptyNode('b', 'FILE'), emptyNode('a', 'FILE')];
    expect(() => decodeTreeChunks(encodeTree(unsorted), 'tree')).toThrow(/not sorted/);
  });
});

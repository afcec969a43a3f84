import protobuf from 'protobufjs';
import { ID_BYTES } from './hash.js';
import { CONVERSION, protoRoot } from './proto.js';
import { CairnError, Code } from './errors.js';
import type { Node } from './messages.js';

/**
 * The tree blob: one directory's entries as the protobuf `Tree` message, nodes sorted by
 * name and encoded with fields in number order, so the same directory always encodes to the
 * same bytes and therefore the same id.
 */
const TreeType = protoRoot.lookupType('cairn.v1.Tree');
const NodeType = protoRoot.lookupType('cairn.v1.Node');

export const MAX_TREE_ENTRIES = 1_000_000;
const MAX_NAME_LENGTH = 4096;
const NODE_TYPES = new Set(['FILE', 'DIR', 'SYMLINK']);

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

export function encodeTree(nodes: Node[]): Buffer {
  validateNodes(nodes, 'tree');
  const msg = TreeType.fromObject({ nodes });
  return Buffer.from(TreeType.encode(msg).finish());
}

/**
 * Calls `fn` with the bytes of each top-level `nodes` field of an encoded Tree. Each node is
 * held to its own length (the generic decoder lets a node's last field run past it), so a
 * counting pass and a decoding pass see exactly the same nodes.
 */
function forEachNode(data: Uint8Array, fn: (bytes: Uint8Array) => void): void {
  const r = protobuf.Reader.create(data);
  while (r.pos < r.len) {
    const tag = r.uint32();
    if (tag >>> 3 !== 1) {
      r.skipType(tag & 7);
      continue;
    }
    if ((tag & 7) !== 2) throw new Error(`node field with wire type ${tag & 7}`);
    const len = r.uint32();
    const start = r.pos;
    r.skip(len);
    fn(data.subarray(start, start + len));
  }
}

/** Decodes untrusted bytes; any malformation is a CairnError with `code`, never a crash. */
export function decodeTree(data: Uint8Array, what: string, code: Code = Code.DATA_LOSS): Node[] {
  const nodes: Node[] = [];
  try {
    // Count before decoding: a 64 MiB blob of five-byte nodes holds 13 million entries, and
    // decoding those into objects would take gigabytes before the limit could be checked.
    let count = 0;
    forEachNode(data, () => count++);
    if (count > MAX_TREE_ENTRIES) throw new CairnError(Code.RESOURCE_EXHAUSTED, `${what}: ${count} entries pass the limit of ${MAX_TREE_ENTRIES} per tree`);
    forEachNode(data, (bytes) => {
      const n = NodeType.toObject(NodeType.decode(bytes), CONVERSION) as Node;
      nodes.push({ ...n, chunks: n.chunks.map(asBuffer), subtree: asBuffer(n.subtree) });
    });
  } catch (err) {
    if (err instanceof CairnError) throw err;
    throw new CairnError(code, `${what}: not a valid tree (${(err as Error).message})`);
  }
  validateNodes(nodes, what, code);
  return nodes;
}

function asBuffer(u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

export function emptyNode(name: string, type: Node['type']): Node {
  return { name, type, mode: 0, mtimeNs: '0', size: '0', chunks: [], subtree: Buffer.alloc(0), target: '', inode: '0', ctimeNs: '0' };
}

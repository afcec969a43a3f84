import { describe, expect, it } from 'vitest';
import type { Node } from '../common/messages.js';
import { emptyNode, encodeTree, MAX_TREE_BLOB_BYTES, MAX_TREE_ENTRIES } from '../common/tree.js';
import { checkTreeFits, treeBytesFloor, type ScanEntry } from '../client/scan.js';

function entry(name: string, type: ScanEntry['type'], size: bigint): ScanEntry {
  return { name, abs: `/data/${name}`, rel: name, type, st: { mode: 0o100644n, size, mtimeNs: 0n, ctimeNs: 0n, ino: 0n } };
}

describe('a directory must fit one tree blob', () => {
  it('counts exactly the bytes of the smallest entries of each kind, and fewer than real ones take', () => {
    const entries = [entry('a', 'FILE', 0n), entry('b', 'FILE', 1n), entry('c', 'DIR', 0n), entry('d', 'SYMLINK', 3n), entry('é', 'FILE', 0n)];
    const smallest: Node[] = [
      emptyNode('a', 'FILE'),
      { ...emptyNode('b', 'FILE'), size: '1', chunks: [Buffer.alloc(32)] },
      { ...emptyNode('c', 'DIR'), subtree: Buffer.alloc(32) },
      { ...emptyNode('d', 'SYMLINK'), target: '../', size: '3' },
      emptyNode('é', 'FILE'),
    ];
    expect(treeBytesFloor(entries, false)).toBe(encodeTree(smallest).length);
    const real = smallest.map((n) => ({ ...n, mode: 0o100644, mtimeNs: '1763870000123456789', ctimeNs: '1763870000123456789', inode: '48213377' }));
    expect(treeBytesFloor(entries, false)).toBeLessThan(encodeTree(real).length);
  });

  it('counts exactly the bytes the archiver encodes, given one chunk per non-empty file', () => {
    const st = { mode: 0o100644n, mtimeNs: 1763870000123456789n, ctimeNs: 1763870000987654321n, ino: 48213377n };
    const entries: ScanEntry[] = [
      { name: 'empty', abs: '/d/empty', rel: 'empty', type: 'FILE', st: { ...st, size: 0n } },
      { name: 'latest', abs: '/d/latest', rel: 'latest', type: 'SYMLINK', st: { ...st, mode: 0o120777n, size: 10n, mtimeNs: -5n } },
      { name: 'runs', abs: '/d/runs', rel: 'runs', type: 'DIR', st: { ...st, mode: 0o40755n, size: 4096n } },
      { name: 'shared.bin', abs: '/d/shared.bin', rel: 'shared.bin', type: 'FILE', st: { ...st, size: 7n, linked: { nlink: 300, dev: 2049 } } },
      { name: 'weights.bin', abs: '/d/weights.bin', rel: 'weights.bin', type: 'FILE', st: { ...st, size: 5_000_000_000n } },
    ];
    const meta = { mode: 0o644, mtimeNs: String(st.mtimeNs), ctimeNs: String(st.ctimeNs), inode: String(st.ino) };
    const encoded: Node[] = [
      { ...emptyNode('empty', 'FILE'), ...meta, size: '0' },
      { ...emptyNode('latest', 'SYMLINK'), ...meta, mode: 0o777, mtimeNs: '-5', size: '10', target: 'runs/run-7' },
      { ...emptyNode('runs', 'DIR'), ...meta, mode: 0o755, size: '0', ctimeNs: '0', inode: '0', subtree: Buffer.alloc(32) },
      { ...emptyNode('shared.bin', 'FILE'), ...meta, size: '7', chunks: [Buffer.alloc(32)], links: 300 },
      { ...emptyNode('weights.bin', 'FILE'), ...meta, size: '5000000000', chunks: [Buffer.alloc(32)] },
    ];
    expect(treeBytesFloor(entries, true)).toBe(encodeTree(encoded).length);
  });

  it('refuses 410,000 one-byte files of 100-byte names, which only the exact count finds past the limit', () => {
    const st = { mode: 0o100644n, size: 1n, mtimeNs: 1763870000123456789n, ctimeNs: 1763870000123456789n, ino: 48213377n };
    const many = Array.from({ length: 410_000 }, (_, i): ScanEntry => ({ name: String(i).padStart(100, 'f'), abs: '', rel: '', type: 'FILE', st }));
    expect(treeBytesFloor(many, false)).toBeLessThan(MAX_TREE_BLOB_BYTES);
    expect(() => checkTreeFits('/data/flat', many)).toThrow(/^\/data\/flat holds 410000 entries whose listing takes at least 68\.4 MiB, past the 64\.0 MiB/);
    expect(() => checkTreeFits('/data/flat', many.slice(0, 360_000))).not.toThrow();
  });

  it(`refuses more than ${MAX_TREE_ENTRIES} entries, and names the directory`, () => {
    const many = Array<ScanEntry>(MAX_TREE_ENTRIES + 1).fill(entry('x', 'FILE', 0n));
    expect(() => checkTreeFits('/data/shards', many)).toThrow(`/data/shards holds ${MAX_TREE_ENTRIES + 1} entries to back up; a directory may hold at most ${MAX_TREE_ENTRIES}: exclude some of them or spread them over subdirectories`);
    expect(() => checkTreeFits('/data/shards', many.slice(1))).not.toThrow();
  });

  it('refuses entries whose names alone pass the tree size limit', () => {
    const long = entry('n'.repeat(255), 'FILE', 10n);
    const perEntry = treeBytesFloor([long], true);
    const over = Math.floor(MAX_TREE_BLOB_BYTES / perEntry) + 1;
    expect(() => checkTreeFits('/data/long', Array<ScanEntry>(over).fill(long))).toThrow(/^\/data\/long holds \d+ entries whose listing takes at least 64\.0 MiB, past the 64\.0 MiB a directory may take/);
    expect(() => checkTreeFits('/data/long', Array<ScanEntry>(over - 1).fill(long))).not.toThrow();
  });
});

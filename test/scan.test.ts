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
    expect(treeBytesFloor(entries)).toBe(encodeTree(smallest).length);
    const real = smallest.map((n) => ({ ...n, mode: 0o100644, mtimeNs: '1763870000123456789', ctimeNs: '1763870000123456789', inode: '48213377' }));
    expect(treeBytesFloor(entries)).toBeLessThan(encodeTree(real).length);
  });

  it(`refuses more than ${MAX_TREE_ENTRIES} entries, and names the directory`, () => {
    const many = Array<ScanEntry>(MAX_TREE_ENTRIES + 1).fill(entry('x', 'FILE', 0n));
    expect(() => checkTreeFits('/data/shards', many)).toThrow(`/data/shards holds ${MAX_TREE_ENTRIES + 1} entries to back up; a directory may hold at most ${MAX_TREE_ENTRIES}: exclude some of them or spread them over subdirectories`);
    expect(() => checkTreeFits('/data/shards', many.slice(1))).not.toThrow();
  });

  it('refuses entries whose names alone pass the tree size limit', () => {
    const long = entry('n'.repeat(255), 'FILE', 10n);
    const perEntry = 20 + 255 + 34;
    const over = Math.floor(MAX_TREE_BLOB_BYTES / perEntry) + 1;
    expect(() => checkTreeFits('/data/long', Array<ScanEntry>(over).fill(long))).toThrow(/^\/data\/long holds \d+ entries whose listing takes at least 64\.0 MiB, past the 64\.0 MiB a directory may take/);
    expect(() => checkTreeFits('/data/long', Array<ScanEntry>(over - 1).fill(long))).not.toThrow();
  });
});

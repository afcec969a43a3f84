import { describe, expect, it } from 'vitest';
import { hash, toHex } from '../common/hash.js';
import type { Node } from '../common/messages.js';
import { emptyNode } from '../common/tree.js';
import { ParentTreeReader } from '../client/parent-trees.js';

/** A parent snapshot as the server would serve it: tree id -> nodes. */
function fakeRepo(): { trees: Map<string, Node[]>; root: Buffer; dirs: Buffer[] } {
  const trees = new Map<string, Node[]>();
  const dirs: Buffer[] = [];
  const rootNodes: Node[] = [];
  for (let i = 0; i < 50; i++) {
    const leaf = [Object.assign(emptyNode(`f${i}`, 'FILE'), { size: '1' })];
    const id = hash(Buffer.from(`dir ${i}`));
    trees.set(toHex(id), leaf);
    dirs.push(id);
    rootNodes.push(Object.assign(emptyNode(`d${String(i).padStart(2, '0')}`, 'DIR'), { subtree: id }));
  }
  const root = hash(Buffer.from('root'));
  trees.set(toHex(root), rootNodes);
  return { trees, root, dirs };
}

describe('ParentTreeReader', () => {
  it('reads the subtrees of a tree ahead in walk order, each once', async () => {
    const { trees, root, dirs } = fakeRepo();
    const asked: string[] = [];
    const reader = new ParentTreeReader(async (id) => {
      asked.push(toHex(id));
      return trees.get(toHex(id))!;
    });
    expect(await reader.read(root)).toHaveLength(50);
    // The root, then a bounded window of its subtrees, asked before the walk wants them.
    expect(asked).toEqual([root, ...dirs.slice(0, 32)].map(toHex));
    for (let i = 0; i < dirs.length; i++) expect((await reader.read(dirs[i]))[0].name).toBe(`f${i}`);
    expect(asked).toHaveLength(51);
    expect(new Set(asked).size).toBe(51);
  });

  it('drops what it read ahead for directories the walk skips (deleted since the parent)', async () => {
    const { trees, root, dirs } = fakeRepo();
    const asked: string[] = [];
    const reader = new ParentTreeReader(async (id) => {
      asked.push(toHex(id));
      return trees.get(toHex(id))!;
    });
    await reader.read(root);
    // d00-d09 are gone; the window moves on and the rest is still read once each.
    for (let i = 10; i < dirs.length; i++) expect((await reader.read(dirs[i]))[0].name).toBe(`f${i}`);
    expect(new Set(asked).size).toBe(asked.length);
    expect(asked).toHaveLength(51);
    // A tree the walk asks for again (two identical directories) is fetched again, not lost.
    expect((await reader.read(dirs[49]))[0].name).toBe('f49');
  });

  it('a failed read-ahead is retried when the walk asks for that tree', async () => {
    const { trees, root, dirs } = fakeRepo();
    let failFirst = true;
    const reader = new ParentTreeReader(async (id) => {
      if (id.equals(dirs[0]) && failFirst) {
        failFirst = false;
        throw new Error('connection reset');
      }
      return trees.get(toHex(id))!;
    });
    await reader.read(root);
    await new Promise((r) => setImmediate(r));
    expect((await reader.read(dirs[0]))[0].name).toBe('f0');
  });
});

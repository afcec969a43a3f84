import { toHex } from '../common/hash.js';
import type { Node } from '../common/messages.js';
import type { IndexDb } from './index-db.js';
import type { Repository } from './repository.js';

/** Trees read at once: enough to hide object-store latency, few enough to bound memory. */
const WALK_BATCH = 32;

export interface TreeWalk {
  /** Called once per tree reached and read; the walker descends into its DIR entries itself. */
  visit(id: Buffer, nodes: Node[]): Promise<void>;
  /** Called for a tree that cannot be read (missing, corrupt, not a tree); its subtrees are not reached. */
  unreadable(id: Buffer, err: unknown): Promise<void>;
}

/**
 * Visits every tree under `roots` once. Visited trees are remembered as `<seenPrefix><id>`
 * keys in `seen` (a scratch LevelDB), so a subtree shared by many snapshots is read once and
 * memory holds only the trees waiting on the stack.
 */
export async function walkTrees(repo: Repository, seen: IndexDb, seenPrefix: string, roots: Buffer[], walk: TreeWalk): Promise<number> {
  const stack = [...roots];
  let visited = 0;
  while (stack.length > 0) {
    const batch = new Map<string, Buffer>();
    for (const id of stack.splice(Math.max(0, stack.length - WALK_BATCH))) batch.set(toHex(id), id);
    const hexes = [...batch.keys()];
    const already = await seen.db.getMany(hexes.map((h) => seenPrefix + h));
    const fresh = hexes.filter((_, i) => already[i] === undefined);
    if (fresh.length === 0) continue;
    await seen.putMarkers(fresh.map((h) => seenPrefix + h));
    const read = await Promise.all(
      fresh.map(async (h) => {
        const id = batch.get(h)!;
        try {
          return { id, nodes: await repo.readTree(id) };
        } catch (err) {
          return { id, err };
        }
      }),
    );
    for (const r of read) {
      if (!r.nodes) {
        await walk.unreadable(r.id, r.err);
        continue;
      }
      visited++;
      await walk.visit(r.id, r.nodes);
      for (const n of r.nodes) if (n.type === 'DIR') stack.push(n.subtree);
    }
  }
  return visited;
}

import { toHex } from '../common/hash.js';
import type { Node } from '../common/messages.js';
import type { IndexDb } from './index-db.js';
import type { Repository } from './repository.js';

/** Trees read at once: enough to hide object-store latency... */
const WALK_BATCH = 32;
/** ...within this many raw tree bytes, since a decoded tree costs several times its size in objects. */
const WALK_BYTES = 4 * 1024 * 1024;

export interface TreeWalk {
  /** Called once per tree reached and read; the walker descends into its DIR entries itself. */
  visit(id: Buffer, nodes: Node[]): Promise<void>;
  /** Called for a tree that cannot be read (missing, corrupt, not a tree); its subtrees are not reached. */
  unreadable(id: Buffer, err: unknown): Promise<void>;
}

/**
 * Visits every tree under `roots` once. Visited trees are remembered as `<seenPrefix><id>`
 * keys in `seen` (a scratch LevelDB), so a subtree shared by many snapshots is read once and
 * memory holds only the trees being read and the ids waiting on the stack.
 */
export async function walkTrees(repo: Repository, seen: IndexDb, seenPrefix: string, roots: Buffer[], walk: TreeWalk): Promise<number> {
  const stack = [...roots];
  let visited = 0;
  while (stack.length > 0) {
    const batch = new Map<string, Buffer>();
    for (const id of stack.splice(Math.max(0, stack.length - WALK_BATCH))) batch.set(toHex(id), id);
    const hexes = [...batch.keys()];
    const already = await seen.db.getMany(hexes.map((h) => seenPrefix + h));
    const fresh = hexes.filter((_, i) => already[i] === undefined).map((h) => batch.get(h)!);
    const locs = await repo.index.locate(fresh);
    let i = 0;
    while (i < fresh.length) {
      // At least one tree per round, however large.
      let bytes = locs[i]?.rawLength ?? 0;
      let j = i + 1;
      while (j < fresh.length && bytes + (locs[j]?.rawLength ?? 0) <= WALK_BYTES) bytes += locs[j++]?.rawLength ?? 0;
      const round = fresh.slice(i, j);
      i = j;
      await seen.putMarkers(round.map((id) => seenPrefix + toHex(id)));
      const read = await Promise.all(
        round.map(async (id) => {
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
        // A copy: the id is a view into the decoded tree, which it would keep alive on the stack.
        for (const n of r.nodes) if (n.type === 'DIR') stack.push(Buffer.from(n.subtree));
      }
    }
  }
  return visited;
}

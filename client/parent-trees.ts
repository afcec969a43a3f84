import { toHex } from '../common/hash.js';
import type { Node } from '../common/messages.js';

/** Subtrees read ahead of the walk. */
const READ_AHEAD = 32;

interface Frame {
  /** The subtree ids of one parent directory's subdirectories, in the walk's order. */
  dirs: string[];
  ids: Buffer[];
  next: number;
}

/**
 * Reads the parent snapshot's trees ahead of the walk. The archiver asks for one directory's
 * parent tree at a time, depth first, and each ask was a round trip it waited for: with a
 * few hundred directories that was most of an unchanged snapshot's time.
 *
 * The walk asks in depth-first order over names sorted the way trees are, so the next trees
 * it will want are known: the subdirectories of the tree it just got, then the remaining
 * siblings of each directory above it. A stack of those lists gives the next READ_AHEAD
 * ids; they are requested at once, and anything read ahead that left that window (a
 * directory deleted since the parent snapshot) is dropped, so memory stays bounded.
 */
export class ParentTreeReader {
  private readonly ahead = new Map<string, Promise<Node[]>>();
  private readonly stack: Frame[] = [];

  constructor(private readonly fetch: (id: Buffer) => Promise<Node[]>) {}

  async read(id: Buffer): Promise<Node[]> {
    const hex = toHex(id);
    this.advanceTo(hex);
    const nodes = await (this.ahead.get(hex) ?? this.fetch(id));
    this.ahead.delete(hex);
    const dirs = nodes.filter((n) => n.type === 'DIR' && n.subtree.length > 0);
    this.stack.push({ dirs: dirs.map((n) => toHex(n.subtree)), ids: dirs.map((n) => n.subtree), next: 0 });
    this.refill();
    return nodes;
  }

  /** Moves the cursors past `hex`: frames it is not in are finished directories. */
  private advanceTo(hex: string): void {
    while (this.stack.length > 0) {
      const top = this.stack[this.stack.length - 1];
      const at = top.dirs.indexOf(hex, top.next);
      if (at >= 0) {
        top.next = at + 1;
        return;
      }
      this.stack.pop();
    }
  }

  private refill(): void {
    const want = new Map<string, Buffer>();
    for (let f = this.stack.length - 1; f >= 0 && want.size < READ_AHEAD; f--) {
      const frame = this.stack[f];
      for (let i = frame.next; i < frame.dirs.length && want.size < READ_AHEAD; i++) want.set(frame.dirs[i], frame.ids[i]);
    }
    for (const hex of this.ahead.keys()) if (!want.has(hex)) this.ahead.delete(hex);
    for (const [hex, id] of want) {
      if (this.ahead.has(hex)) continue;
      const nodes = this.fetch(id);
      // A failed read-ahead is no error yet: the walk asks again when it gets there.
      nodes.catch(() => this.ahead.get(hex) === nodes && this.ahead.delete(hex));
      this.ahead.set(hex, nodes);
    }
  }
}

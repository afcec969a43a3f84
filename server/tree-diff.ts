import type { Node, NodeType } from '../common/messages.js';
import type { ChangeKind } from '../common/query-messages.js';
import { compareNames, joinPath } from '../common/tree.js';

export type ReadTree = (id: Buffer) => Promise<Node[]>;

export interface TreeChange {
  path: string;
  change: ChangeKind;
  type: NodeType;
  oldSize: string;
  newSize: string;
}

/**
 * What changed from tree `a` to tree `b`, in path order (a directory before what it holds).
 *
 * Two directories with the same subtree id hold the same bytes, so they are never read:
 * the cost of a diff is the trees along changed paths, not the size of the snapshots.
 *
 * - added / removed: an entry on one side only. A directory is reported once itself and
 *   then every entry beneath it, also as added / removed, so the listing names each file
 *   that appeared or went away with its size.
 * - modified: a file whose chunk list (content) differs, or a symlink whose target does.
 * - metadata: same content, but mode or mtime differs. A directory whose contents changed
 *   is not reported for its mtime (that follows from the changes beneath it), only when its
 *   mode changed or its mtime changed with identical contents.
 * - a name whose type changed (file -> dir, ...) is removed, then added.
 * Inode and ctime are ignored: a restore or copy changes them without changing anything.
 */
export async function* diffTrees(readTree: ReadTree, a: Buffer, b: Buffer, dir = ''): AsyncGenerator<TreeChange> {
  if (a.equals(b)) return;
  const [left, right] = await Promise.all([readTree(a), readTree(b)]);
  let i = 0;
  let j = 0;
  while (i < left.length || j < right.length) {
    const c = i >= left.length ? 1 : j >= right.length ? -1 : compareNames(left[i].name, right[j].name);
    if (c < 0) {
      yield* whole(readTree, left[i], joinPath(dir, left[i].name), 'removed');
      i++;
    } else if (c > 0) {
      yield* whole(readTree, right[j], joinPath(dir, right[j].name), 'added');
      j++;
    } else {
      yield* diffNodes(readTree, left[i], right[j], joinPath(dir, left[i].name));
      i++;
      j++;
    }
  }
}

async function* diffNodes(readTree: ReadTree, l: Node, r: Node, path: string): AsyncGenerator<TreeChange> {
  if (l.type !== r.type) {
    yield* whole(readTree, l, path, 'removed');
    yield* whole(readTree, r, path, 'added');
    return;
  }
  const sameMeta = l.mode === r.mode && l.mtimeNs === r.mtimeNs;
  const meta: TreeChange = { path, change: 'metadata', type: l.type, oldSize: sizeOf(l), newSize: sizeOf(r) };
  if (l.type === 'DIR') {
    const sameTree = l.subtree.equals(r.subtree);
    if (l.mode !== r.mode || (sameTree && !sameMeta)) yield meta;
    if (!sameTree) yield* diffTrees(readTree, l.subtree, r.subtree, path);
    return;
  }
  const sameContent = l.type === 'FILE' ? l.size === r.size && sameChunks(l.chunks, r.chunks) : l.target === r.target;
  if (!sameContent) yield { ...meta, change: 'modified' };
  else if (!sameMeta) yield meta;
}

/** Sizes are content bytes: a symlink's or directory's own size means nothing to a reader of the diff. */
const sizeOf = (n: Node) => (n.type === 'FILE' ? n.size : '0');

function sameChunks(a: Buffer[], b: Buffer[]): boolean {
  return a.length === b.length && a.every((id, k) => id.equals(b[k]));
}

/** An entry present on one side only, and for a directory everything beneath it. */
async function* whole(readTree: ReadTree, node: Node, path: string, change: 'added' | 'removed'): AsyncGenerator<TreeChange> {
  const size = sizeOf(node);
  yield { path, change, type: node.type, oldSize: change === 'removed' ? size : '0', newSize: change === 'added' ? size : '0' };
  if (node.type !== 'DIR') return;
  for (const child of await readTree(node.subtree)) yield* whole(readTree, child, joinPath(path, child.name), change);
}

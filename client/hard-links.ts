import type { Node } from '../common/messages.js';

/**
 * Hard-linked paths a restore keeps track of (each holds its node until the links are made, a
 * few hundred bytes): past this many, further ones are restored as separate files.
 */
export const MAX_TRACKED_LINKS = 100_000;

interface First {
  abs: string;
  node: Node;
  /** It holds the snapshot's bytes: written by this restore, or found already identical. */
  restored: boolean;
}

/**
 * Which files of a restore are one file on the source. A snapshot records each file's inode
 * and, when it has more than one, its link count; the first path of an inode is restored as
 * usual and the others are linked to it, as on the source, instead of taking the space once
 * per path. A later path is linked only when its node agrees with the first one on everything
 * a hard link shares (size, times, mode, chunks): two files that merely share an inode number
 * (the snapshot crossed into another file system) are at worst linked with equal contents.
 */
export class HardLinks {
  private readonly firsts = new Map<string, First>();
  private tracked = 0;

  constructor(private readonly limit = MAX_TRACKED_LINKS) {}

  /**
   * For a file about to be restored at `abs`: `linkTo`, the path of the same file already on
   * the way, which `abs` is to be linked to once that one is restored; `copy` when it is a
   * hard-linked file past the limit, restored as a file of its own; undefined when `abs` is
   * restored as usual (it may then become the first of its inode).
   */
  linkOf(abs: string, node: Node): { linkTo: string } | 'copy' | undefined {
    if (node.type !== 'FILE' || node.links < 2 || node.inode === '0') return undefined;
    if (this.tracked >= this.limit) return 'copy';
    const first = this.firsts.get(node.inode);
    if (first && !sameFile(first.node, node)) return undefined;
    this.tracked++;
    if (first) return { linkTo: first.abs };
    this.firsts.set(node.inode, { abs, node, restored: false });
    return undefined;
  }

  /**
   * `abs` now holds `node`'s bytes, as a file with no other name (written by this restore, or
   * found identical with a link count of 1): links to it may be made. A local file that has
   * other names, perhaps outside the target, is never linked to.
   */
  restored(abs: string, node: Node): void {
    const first = node.links > 1 ? this.firsts.get(node.inode) : undefined;
    if (first?.abs === abs) first.restored = true;
  }

  /** Whether the first path of `node`'s inode holds its bytes (it was not kept as the user had it). */
  isRestored(node: Node): boolean {
    return this.firsts.get(node.inode)?.restored ?? false;
  }
}

function sameFile(a: Node, b: Node): boolean {
  return (
    a.size === b.size &&
    a.mtimeNs === b.mtimeNs &&
    a.ctimeNs === b.ctimeNs &&
    a.mode === b.mode &&
    a.links === b.links &&
    a.chunks.length === b.chunks.length &&
    a.chunks.every((c, i) => c.equals(b.chunks[i]))
  );
}

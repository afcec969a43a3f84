import type { Node } from '../common/messages.js';

/**
 * Hard-linked paths a restore keeps track of (each holds its node until the links are made, a
 * few hundred bytes): past this many, further ones are restored as separate files, and each
 * path of a hard-linked file past it counts as one, the first of its file included.
 */
export const MAX_TRACKED_LINKS = 100_000;

/** A local file as lstat sees it: which file, and how many names it has. */
export interface LocalFile {
  dev: bigint;
  ino: bigint;
  nlink: bigint;
}

interface First {
  abs: string;
  node: Node;
  /** It holds the snapshot's bytes with no name outside this file's paths: links to it may be made. */
  restored: boolean;
  /** Found identical but with other names: linkable only if all of them are this file's paths in the target. */
  shared?: LocalFile;
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
   * found identical with a link count of 1): links to it may be made.
   */
  restored(abs: string, node: Node): void {
    const first = this.firstAt(abs, node);
    if (first) first.restored = true;
  }

  /**
   * `abs` was found holding `node`'s bytes in a local file with other names. Those may be paths
   * of this same file that an earlier restore linked (a re-run, or a resumed restore), or names
   * the user gave it elsewhere, even outside the target, which a link must never join.
   */
  identicalShared(abs: string, node: Node, local: LocalFile): void {
    const first = this.firstAt(abs, node);
    if (first) first.shared = local;
  }

  /**
   * The first paths found identical with other names, and the later paths to be linked to
   * each: `isLocal(path, file)` says whether a path is that local file already. A first path all of
   * whose other names are such paths is one this restore may link to.
   */
  async settleShared(later: ReadonlyArray<{ abs: string; first: string }>, isLocal: (abs: string, local: LocalFile) => Promise<boolean>): Promise<void> {
    const byFirst = new Map<string, First>();
    for (const f of this.firsts.values()) if (f.shared) byFirst.set(f.abs, f);
    if (byFirst.size === 0) return;
    const names = new Map<First, bigint>();
    for (const l of later) {
      const f = byFirst.get(l.first);
      if (f && (await isLocal(l.abs, f.shared!))) names.set(f, (names.get(f) ?? 1n) + 1n);
    }
    for (const f of byFirst.values()) if ((names.get(f) ?? 1n) === f.shared!.nlink) f.restored = true;
  }

  /** Whether the first path of `node`'s inode holds its bytes, with no name outside its paths: links to it may be made. */
  isRestored(node: Node): boolean {
    return this.firsts.get(node.inode)?.restored ?? false;
  }

  private firstAt(abs: string, node: Node): First | undefined {
    const first = node.links > 1 ? this.firsts.get(node.inode) : undefined;
    return first?.abs === abs ? first : undefined;
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

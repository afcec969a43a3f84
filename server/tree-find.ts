import { invalidArgument } from '../common/errors.js';
import { compileGlob } from '../common/glob.js';
import { toHex } from '../common/hash.js';
import type { NodeType } from '../common/messages.js';
import { joinPath } from '../common/tree.js';
import type { ReadTree } from './tree-diff.js';

export interface FindHit {
  path: string;
  type: NodeType;
  size: string;
  mtimeNs: string;
}

/** Bounds on what one call remembers, so a search over 100,000 snapshots stays in bounded memory. */
const MEMO_MAX_SUBTREES = 100_000;
const MEMO_MAX_HITS = 200_000;
const MEMO_MAX_HITS_PER_SUBTREE = 256;

/**
 * Finds the paths inside snapshot trees that match one glob (common/glob.ts: linear-time
 * matching, dot files included). A pattern without '/' matches the base name at any depth
 * ("*.ckpt"), as in gitignore; one with '/' matches the whole path from the snapshot root
 * ("reports/**").
 *
 * Two things keep it from walking everything:
 * - the pattern's literal prefix ("reports" in "reports/**"): directories outside it are
 *   never read;
 * - subtrees walked earlier in the same search: the matches of a subtree depend only on its
 *   id and the path it sits at, so when the same (path, id) comes back (the same directory
 *   unchanged in the next snapshot) its answer is replayed from memory instead of reading
 *   the trees again. Answers with many hits are not remembered; they are walked again.
 */
export class TreeFinder {
  private readonly match: (path: string) => boolean;
  private readonly base: string;
  private readonly memo = new Map<string, FindHit[]>();
  private memoHits = 0;

  /** `stillWanted` throws once the caller has gone; asked before each tree is read. */
  constructor(
    private readonly readTree: ReadTree,
    pattern: string,
    private readonly stillWanted: () => void = () => undefined,
  ) {
    const glob = pattern.replace(/^\/+/, '');
    if (glob === '') throw invalidArgument('find needs a non-empty pattern, such as "**/*.csv" or "reports/**"');
    const compiled = compileGlob(glob, { anyDepth: true });
    this.match = (path) => compiled.matches(path);
    this.base = compiled.base;
  }

  /** Could anything at or below directory `dir` match? Only paths along or under the literal prefix can. */
  private mayContain(dir: string): boolean {
    const base = this.base;
    return base === '' || base === dir || base.startsWith(dir + '/') || dir.startsWith(base + '/');
  }

  async *find(root: Buffer): AsyncGenerator<FindHit> {
    yield* this.walk(root, '');
  }

  private async *walk(id: Buffer, dir: string): AsyncGenerator<FindHit> {
    const key = `${dir}\0${toHex(id)}`;
    const known = this.memo.get(key);
    if (known) {
      yield* known;
      return;
    }
    let hits: FindHit[] | undefined = [];
    const keep = (h: FindHit) => {
      if (!hits) return;
      hits.push(h);
      if (hits.length > MEMO_MAX_HITS_PER_SUBTREE) hits = undefined;
    };
    this.stillWanted();
    for (const node of await this.readTree(id)) {
      const path = joinPath(dir, node.name);
      if (this.match(path)) {
        const hit: FindHit = { path, type: node.type, size: node.type === 'FILE' ? node.size : '0', mtimeNs: node.mtimeNs };
        keep(hit);
        yield hit;
      }
      if (node.type === 'DIR' && this.mayContain(path)) {
        for await (const hit of this.walk(node.subtree, path)) {
          keep(hit);
          yield hit;
        }
      }
    }
    if (hits && this.memo.size < MEMO_MAX_SUBTREES && this.memoHits + hits.length <= MEMO_MAX_HITS) {
      this.memo.set(key, hits);
      this.memoHits += hits.length;
    }
  }
}

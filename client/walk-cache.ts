import { joinPath } from '../common/tree.js';
import { childPath, type EntryStat, type ScanEntry } from './scan.js';

/** One directory as DirReader saw it: what it kept, and what it reported along the way. */
export interface DirListing {
  entries: ScanEntry[];
  problems: Array<{ path: string; err: unknown }>;
  skipped: number;
}

/** What changes when a directory's entries do (one added, removed or renamed, or the directory replaced). */
export interface DirStamp {
  ino: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
}

function sameStamp(a: DirStamp, b: DirStamp): boolean {
  return a.ino === b.ino && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs;
}

interface Packed {
  stamp: DirStamp;
  names: string[];
  types: Uint8Array;
  /** mode, size, ino per entry. */
  unsigned: BigUint64Array;
  /** EntryStat.linked per entry: a count of 0 where it is absent. */
  nlinks: Uint32Array;
  devs: Float64Array;
  /** mtimeNs, ctimeNs per entry: signed, a file may predate 1970. */
  times: BigInt64Array;
  problems: DirListing['problems'];
  skipped: number;
}

const TYPES: ReadonlyArray<ScanEntry['type']> = ['FILE', 'DIR', 'SYMLINK'];

/** ~100 bytes an entry (name, type, six 64-bit values, a link count): at most ~20 MB held. */
export const MAX_CACHED_ENTRIES = 200_000;

/**
 * The pre-scan's listings, handed to the snapshot's walk so it does not readdir, lstat and
 * match exclusions a second time for the same directories (half of an unchanged snapshot's
 * walking). Each listing is packed into typed arrays while it waits and is given out once,
 * and only while its directory is unchanged. A file changed in place since the pre-scan keeps
 * its pre-scan stat: the snapshot then records it as it was then, and the next one sees the
 * change, as if it had happened just after the walk passed.
 * Beyond `maxEntries` nothing more is kept and the walk lists those directories itself.
 */
export class WalkCache {
  private readonly dirs = new Map<string, Packed>();
  private held = 0;

  constructor(private readonly maxEntries = MAX_CACHED_ENTRIES) {}

  /** `stamp`: the directory's own lstat, taken before it was listed. */
  put(abs: string, stamp: DirStamp, listing: DirListing): void {
    const n = listing.entries.length;
    if (this.held + n > this.maxEntries) return;
    this.held += n;
    const packed: Packed = { stamp: { ino: stamp.ino, mtimeNs: stamp.mtimeNs, ctimeNs: stamp.ctimeNs }, names: [], types: new Uint8Array(n), unsigned: new BigUint64Array(3 * n), nlinks: new Uint32Array(n), devs: new Float64Array(n), times: new BigInt64Array(2 * n), problems: listing.problems, skipped: listing.skipped };
    listing.entries.forEach((e, i) => {
      packed.names.push(e.name);
      packed.types[i] = TYPES.indexOf(e.type);
      packed.unsigned.set([e.st.mode, e.st.size, e.st.ino], 3 * i);
      packed.nlinks[i] = e.st.linked?.nlink ?? 0;
      packed.devs[i] = e.st.linked?.dev ?? 0;
      packed.times.set([e.st.mtimeNs, e.st.ctimeNs], 2 * i);
    });
    this.dirs.set(abs, packed);
  }

  /**
   * The listing of `abs` (whose path in the snapshot is `rel`), once; undefined when not kept,
   * or when the directory's stamp now differs from the one it was listed under: on a long
   * snapshot the walk may reach a directory hours after the pre-scan listed it.
   */
  take(abs: string, rel: string, now: DirStamp | undefined): DirListing | undefined {
    const p = this.dirs.get(abs);
    if (!p) return undefined;
    this.dirs.delete(abs);
    this.held -= p.names.length;
    if (!now || !sameStamp(p.stamp, now)) return undefined;
    const entries = p.names.map((name, i): ScanEntry => {
      const st: EntryStat = { mode: p.unsigned[3 * i], size: p.unsigned[3 * i + 1], ino: p.unsigned[3 * i + 2], mtimeNs: p.times[2 * i], ctimeNs: p.times[2 * i + 1] };
      if (p.nlinks[i] > 0) st.linked = { nlink: p.nlinks[i], dev: p.devs[i] };
      return { name, abs: childPath(abs, name), rel: joinPath(rel, name), st, type: TYPES[p.types[i]] };
    });
    return { entries, problems: p.problems, skipped: p.skipped };
  }
}

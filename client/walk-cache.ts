import path from 'node:path';
import type { EntryStat, ScanEntry } from './scan.js';

/** One directory as DirReader saw it: what it kept, and what it reported along the way. */
export interface DirListing {
  entries: ScanEntry[];
  problems: Array<{ path: string; err: unknown }>;
  skipped: number;
}

interface Packed {
  names: string[];
  types: Uint8Array;
  /** mode, size, ino per entry. */
  unsigned: BigUint64Array;
  /** mtimeNs, ctimeNs per entry: signed, a file may predate 1970. */
  times: BigInt64Array;
  problems: DirListing['problems'];
  skipped: number;
}

const TYPES: ReadonlyArray<ScanEntry['type']> = ['FILE', 'DIR', 'SYMLINK'];

/** ~100 bytes an entry (name, type, five 64-bit values): at most ~20 MB held. */
export const MAX_CACHED_ENTRIES = 200_000;

/**
 * The pre-scan's listings, handed to the snapshot's walk so it does not readdir, lstat and
 * match exclusions a second time for the same directories (half of an unchanged snapshot's
 * walking). Each listing is packed into typed arrays while it waits and is given out once.
 * Beyond `maxEntries` nothing more is kept and the walk lists those directories itself.
 */
export class WalkCache {
  private readonly dirs = new Map<string, Packed>();
  private held = 0;

  constructor(private readonly maxEntries = MAX_CACHED_ENTRIES) {}

  put(abs: string, listing: DirListing): void {
    const n = listing.entries.length;
    if (this.held + n > this.maxEntries) return;
    this.held += n;
    const packed: Packed = { names: [], types: new Uint8Array(n), unsigned: new BigUint64Array(3 * n), times: new BigInt64Array(2 * n), problems: listing.problems, skipped: listing.skipped };
    listing.entries.forEach((e, i) => {
      packed.names.push(e.name);
      packed.types[i] = TYPES.indexOf(e.type);
      packed.unsigned.set([e.st.mode, e.st.size, e.st.ino], 3 * i);
      packed.times.set([e.st.mtimeNs, e.st.ctimeNs], 2 * i);
    });
    this.dirs.set(abs, packed);
  }

  /** The listing of `abs` (whose path in the snapshot is `rel`), once; undefined when not kept. */
  take(abs: string, rel: string): DirListing | undefined {
    const p = this.dirs.get(abs);
    if (!p) return undefined;
    this.dirs.delete(abs);
    this.held -= p.names.length;
    const entries = p.names.map((name, i): ScanEntry => {
      const st: EntryStat = { mode: p.unsigned[3 * i], size: p.unsigned[3 * i + 1], ino: p.unsigned[3 * i + 2], mtimeNs: p.times[2 * i], ctimeNs: p.times[2 * i + 1] };
      return { name, abs: path.join(abs, name), rel: rel === '' ? name : `${rel}/${name}`, st, type: TYPES[p.types[i]] };
    });
    return { entries, problems: p.problems, skipped: p.skipped };
  }
}

import { toHex } from '../common/hash.js';
import { notFound } from '../common/errors.js';
import { packKey } from '../common/pack-format.js';
import type { Location } from './index-db.js';
import type { Repository } from './repository.js';

/** Blobs closer than this in one pack are fetched with one ranged read: fewer requests beat a few wasted bytes. */
const COALESCE_GAP = 1024 * 1024;
/** Never one ranged read larger than this, so memory stays bounded whatever the request. */
const MAX_RANGE = 32 * 1024 * 1024;

export interface StoredBlob {
  id: Buffer;
  loc: Location;
  stored: Buffer;
}

interface Wanted {
  id: Buffer;
  loc: Location;
}

/**
 * Reads blobs in stored form, grouped by pack and sorted by offset, with neighbouring
 * blobs coalesced into one ranged read. Yields in pack order, not request order.
 */
export async function* readBlobsByPack(repo: Repository, ids: Buffer[]): AsyncGenerator<StoredBlob> {
  const locs = await repo.index.locate(ids);
  const byPack = new Map<string, Wanted[]>();
  locs.forEach((loc, i) => {
    if (!loc) throw notFound(`chunk ${toHex(ids[i])} is not in repository ${repo.name}`);
    const packHex = toHex(loc.pack);
    let list = byPack.get(packHex);
    if (!list) byPack.set(packHex, (list = []));
    list.push({ id: ids[i], loc });
  });
  for (const [packHex, wanted] of byPack) {
    wanted.sort((a, b) => a.loc.offset - b.loc.offset);
    let i = 0;
    while (i < wanted.length) {
      const start = wanted[i].loc.offset;
      let end = start + wanted[i].loc.storedLength;
      let j = i + 1;
      while (j < wanted.length) {
        const next = wanted[j].loc;
        const nextEnd = Math.max(end, next.offset + next.storedLength);
        if (next.offset - end > COALESCE_GAP || nextEnd - start > MAX_RANGE) break;
        end = nextEnd;
        j++;
      }
      const range = await repo.store.getRange(packKey(packHex), start, end - start);
      for (let k = i; k < j; k++) {
        const { id, loc } = wanted[k];
        yield { id, loc, stored: range.subarray(loc.offset - start, loc.offset - start + loc.storedLength) };
      }
      i = j;
    }
  }
}

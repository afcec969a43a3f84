/**
 * The page-cache state every timed step starts from. On this kind of VM the kernel pages out
 * idle page cache within a minute (DAMON `pageout`, measured: ~200 MiB per 15 s), so without
 * this a step found whatever the previous tool's run had left: the first tool after the
 * dataset was written read from memory, the next ones partly from disk.
 */
import { execFileSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';

export const CACHE_MODES = ['warm', 'cold', 'as-is'] as const;
export type CacheMode = (typeof CACHE_MODES)[number];

export function parseCacheMode(value: string): CacheMode {
  if ((CACHE_MODES as readonly string[]).includes(value)) return value as CacheMode;
  throw new Error(`--page-cache must be one of ${CACHE_MODES.join(', ')}, got ${JSON.stringify(value)}`);
}

/**
 * warm: reads every file under `dirs` (the source and the tool's own repository, index and
 * cache), as a machine that just wrote its data would have it; cold: drops the whole page
 * cache (root only), as a nightly run on a busy machine would find it; as-is: does nothing.
 * Both write back what is dirty first: a gigabyte the dataset generator or the previous tool
 * left in the page cache would otherwise be flushed during the next step, charging its disk
 * and kernel time to a tool that did not write it.
 */
export async function prepareCache(mode: CacheMode, dirs: string[]): Promise<void> {
  if (mode === 'as-is') return;
  execFileSync('sync');
  if (mode === 'cold') {
    await writeFile('/proc/sys/vm/drop_caches', '3');
    return;
  }
  for (const dir of dirs) {
    // find | xargs cat: a million small files in seconds, where reading them one promise at a
    // time from node took minutes. A missing directory (no repository yet) is fine.
    execFileSync('sh', ['-c', 'test -d "$1" || exit 0; find "$1" -type f -print0 | xargs -0 -r cat > /dev/null', 'sh', dir]);
  }
}

/** Throws unless `cold` can drop the cache here (it needs root). */
export async function checkCacheMode(mode: CacheMode): Promise<void> {
  if (mode === 'cold') await prepareCache('cold', []);
}

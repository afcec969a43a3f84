import os from 'node:os';
import path from 'node:path';

/**
 * The client's cache directory unless --cache-dir says: CAIRN_CACHE_DIR, else the XDG cache
 * directory. It holds the tree cache and the CLI's compiled code; losing it costs time only.
 */
export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.CAIRN_CACHE_DIR) return env.CAIRN_CACHE_DIR;
  const base = env.XDG_CACHE_HOME || path.join(env.HOME || os.homedir(), '.cache');
  return path.join(base, 'cairn');
}

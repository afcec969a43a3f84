import { readFileSync } from 'node:fs';
import path from 'node:path';

export interface BinCommand {
  /** Environment the shebang sets (NAME=value before `node`). */
  env: Record<string, string>;
  /** Flags it gives node. */
  flags: string[];
}

/**
 * How bin/cairn or bin/cairn-server starts node (their `#!/usr/bin/env -S [NAME=value ...]
 * node [flags]` line). The bench and the test harness start `dist/` with node directly, so
 * they can add flags of their own (profiling) in front; this keeps them running the programs
 * the way an installed one runs. `root` is the package root (this file runs from bench/ under
 * vitest and from dist/bench/).
 */
export function binCommand(root: string, bin: 'cairn' | 'cairn-server'): BinCommand {
  const first = readFileSync(path.join(root, 'bin', bin), 'utf8').split('\n')[0];
  const m = /^#!\/usr\/bin\/env -S (.*)$/.exec(first);
  const words = m ? m[1].trim().split(/\s+/) : [];
  const at = words.indexOf('node');
  if (at < 0 || !words.slice(0, at).every((w) => /^[A-Z_][A-Z0-9_]*=/.test(w))) {
    throw new Error(`bin/${bin} does not start with #!/usr/bin/env -S [NAME=value ...] node`);
  }
  const env = Object.fromEntries(words.slice(0, at).map((w) => [w.slice(0, w.indexOf('=')), w.slice(w.indexOf('=') + 1)]));
  return { env, flags: words.slice(at + 1) };
}

import { readFileSync } from 'node:fs';
import path from 'node:path';

/**
 * The node flags a user gets from bin/cairn or bin/cairn-server (their `#!/usr/bin/env -S
 * node ...` line). The bench and the test harness start `dist/` with node directly, so they
 * can add flags of their own (profiling) in front; these keep them running the programs the
 * way an installed one runs.
 */
/** `root` is the package root (this file runs from bench/ under vitest and from dist/bench/). */
export function binNodeFlags(root: string, bin: 'cairn' | 'cairn-server'): string[] {
  const first = readFileSync(path.join(root, 'bin', bin), 'utf8').split('\n')[0];
  const m = /^#!\/usr\/bin\/env -S node(.*)$/.exec(first);
  if (!m) throw new Error(`bin/${bin} does not start with #!/usr/bin/env -S node`);
  return m[1].trim().split(/\s+/).filter(Boolean);
}

import { readFileSync } from 'node:fs';

function packageVersion(): string {
  for (const rel of ['../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'cairn' && pkg.version) return pkg.version;
    } catch {
      // not at this depth: sources run from common/, compiled code from dist/common/
    }
  }
  return '0.0.0';
}

export const SERVER_VERSION = packageVersion();
export const CLIENT_VERSION = SERVER_VERSION;

import path from 'node:path';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { toHex } from '../common/hash.js';
import { FileStore } from '../server/file-store.js';
import { Repository } from '../server/repository.js';
import { SessionManager } from '../server/sessions.js';
import { cleanupTmp, tmpDir } from './harness.js';
import { randomBytes } from './tree-gen.js';

afterAll(() => cleanupTmp());

async function keysUnder(repo: Repository, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const k of repo.index.keys(prefix)) keys.push(k);
  return keys;
}

describe('backup sessions', () => {
  it('clears pins an upload writes after its session ended', async () => {
    const dir = tmpDir();
    const repo = await Repository.open({ name: 'default', store: new FileStore(path.join(dir, 'store')), indexDir: path.join(dir, 'index'), log: pino({ level: 'silent' }) });
    const sessions = new SessionManager({ maxSessions: 4, maxSessionsPerPrincipal: 4, idleTimeoutMs: 60_000 });
    try {
      const live = await sessions.begin({ repo, dataset: 'd', host: 'h', paths: ['/x'], tags: [], time: '', principal: 'local' }, async () => undefined);
      const ended = await sessions.begin({ repo, dataset: 'd', host: 'h', paths: ['/x'], tags: [], time: '', principal: 'local' }, async () => undefined);
      const ids = [toHex(randomBytes(32, 1)), toHex(randomBytes(32, 2))];
      await sessions.pin(live, ids);
      await sessions.end(ended);
      // The Upload looked its session up before the commit ended it, and pins after.
      await sessions.pin(ended, ids);
      expect(await keysUnder(repo, `pin/${ended.id}/`)).toEqual([]);
      expect(await keysUnder(repo, `pin/${live.id}/`)).toHaveLength(2);
    } finally {
      await sessions.close();
      await repo.close();
    }
  });
});

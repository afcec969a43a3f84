import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { FileStore } from '../server/file-store.js';
import { objectStoreContract } from './store-contract.js';

objectStoreContract('FileStore', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'cairn-filestore-'));
  return { store: new FileStore(dir), cleanup: () => rm(dir, { recursive: true, force: true }) };
});

import { randomBytes } from 'node:crypto';
import { constants, promises as fs } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { FileStore } from '../server/file-store.js';
import { PrefixedStore } from '../server/prefixed-store.js';
import { listAll, objectStoreContract } from './store-contract.js';
import { directIoChecked, openFlags } from './direct-io.js';

objectStoreContract('FileStore', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'cairn-filestore-'));
  return { store: new FileStore(dir), cleanup: () => rm(dir, { recursive: true, force: true }) };
});

objectStoreContract('PrefixedStore over FileStore', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'cairn-prefixed-'));
  return { store: new PrefixedStore(new FileStore(dir), 'repos/r/'), cleanup: () => rm(dir, { recursive: true, force: true }) };
});

/** Runs `fn` in a fresh directory, removed afterwards whatever happens. */
async function inTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  // Resolved, so /proc/self/fd's links (always real paths) compare equal to ours.
  const dir = await fs.realpath(await mkdtemp(path.join(os.tmpdir(), 'cairn-filestore-')));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Every file under `dir`, relative, finished or not. */
async function filesOnDisk(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { withFileTypes: true, recursive: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name)))
    .sort();
}

describe('FileStore temporaries', () => {
  it('an object writer streams into a .tmp- file of the store that becomes the object at commit', async () => {
    await inTempDir(async (dir) => {
      const store = new FileStore(dir);
      const writer = await store.openWriter('repos/r/packs');
      const data = randomBytes(5 * 1024 * 1024);
      await writer.write(data);
      const [tmp, ...more] = await filesOnDisk(dir);
      expect(more).toEqual([]);
      expect(tmp).toMatch(/^repos\/r\/packs\/\.tmp-[0-9a-f]{12}$/);
      // Past the two write buffers (one filling, one on its way) the bytes are on disk, not in memory.
      expect((await fs.stat(path.join(dir, tmp!))).size).toBeGreaterThanOrEqual(3 * 1024 * 1024);
      await writer.commit('repos/r/packs/ab/done');
      expect(await filesOnDisk(dir)).toEqual(['repos/r/packs/ab/done']);
      expect((await fs.readFile(path.join(dir, 'repos/r/packs/ab/done'))).equals(data)).toBe(true);
    });
  });

  it('abort removes the temporary file', async () => {
    await inTempDir(async (dir) => {
      const writer = await new FileStore(dir).openWriter('packs');
      await writer.write(randomBytes(2 * 1024 * 1024));
      await writer.abort();
      expect(await filesOnDisk(dir)).toEqual([]);
    });
  });

  it('deleteUnfinished removes the temporaries of writers and of puts under the prefix only', async () => {
    await inTempDir(async (dir) => {
      const store = new FileStore(dir);
      await store.put('repos/a/packs/aa/kept', Buffer.from('kept'));
      const dead = [await store.openWriter('repos/a/packs'), await store.openWriter('repos/b/packs')];
      await dead[0]!.write(randomBytes(2 * 1024 * 1024));
      // What a put killed between its write and its rename leaves.
      await fs.writeFile(path.join(dir, 'repos/a/packs/aa/kept2.tmp-0123456789ab'), 'torn');
      await dead[1]!.write(randomBytes(10));
      expect(await store.deleteUnfinished('repos/a/')).toBe(2);
      const left = await filesOnDisk(dir);
      expect(left.filter((f) => f.startsWith('repos/a/'))).toEqual(['repos/a/packs/aa/kept']);
      expect(left.filter((f) => f.startsWith('repos/b/'))).toHaveLength(1);
      expect(await listAll(store, '')).toEqual([{ key: 'repos/a/packs/aa/kept', size: 4 }]);
      for (const w of dead) await w.abort();
    });
  });

  it('takes only temporaries\' own names for temporaries, not keys that contain .tmp-', async () => {
    await inTempDir(async (dir) => {
      const store = new FileStore(dir);
      const keys = ['repos/nightly.tmp-1/config', 'repos/r/policies/exp.tmp-0123456789ab-x', 'repos/r/packs/ab/x.tmp-0123456789abc'];
      for (const k of keys) await store.put(k, Buffer.from(k));
      expect(await store.deleteUnfinished('')).toBe(0);
      expect((await listAll(store, '')).map((o) => o.key).sort()).toEqual([...keys].sort());
      expect(await filesOnDisk(dir)).toEqual([...keys].sort());
    });
  });

  it('abort after a failed commit closes the temporary\'s descriptor', async () => {
    await inTempDir(async (dir) => {
      const fds = () => fs.readdir('/proc/self/fd').then((l) => l.length);
      const store = new FileStore(dir);
      const before = await fds();
      const writer = await store.openWriter('packs');
      await writer.write(randomBytes(1000));
      await expect(writer.commit('../outside')).rejects.toThrow(/invalid object key/);
      await writer.abort();
      expect(await fds()).toBe(before);
      expect(await filesOnDisk(dir)).toEqual([]);
    });
  });
});

// Linux filesystems that take O_DIRECT and check its alignment (this machine's /tmp is ext4).
const direct = await directIoChecked(os.tmpdir());

describe('FileStore writers past the page cache', () => {
  const MiB = 1024 * 1024;

  it.runIf(direct)('write packs with O_DIRECT where the filesystem takes it, and every length comes back exact', async () => {
    await inTempDir(async (dir) => {
      const store = new FileStore(dir);
      // Either side of a 4 KiB block and of the 1 MiB write buffers: direct writes move whole
      // blocks, so a length off a block boundary ends in a padded block that commit cuts back.
      const lengths = [0, 1, 4095, 4096, 4097, MiB - 1, MiB, MiB + 1, 2 * MiB + 4097, 5 * MiB + 3];
      for (const length of lengths) {
        const data = randomBytes(length);
        const writer = await store.openWriter('packs');
        const [tmp] = await filesOnDisk(dir).then((l) => l.filter((f) => f.includes('.tmp-')));
        expect(await openFlags(path.join(dir, tmp!)) & constants.O_DIRECT, `O_DIRECT on ${tmp}`).toBe(constants.O_DIRECT);
        // Uneven pieces, so buffers fill and flip at offsets no block boundary matches.
        for (let at = 0; at < length; at += 777_777) await writer.write(data.subarray(at, Math.min(length, at + 777_777)));
        await writer.commit(`packs/${length}`);
        const back = await store.get(`packs/${length}`);
        expect(back.length, `length ${length}`).toBe(length);
        expect(back.equals(data), `bytes of length ${length}`).toBe(true);
      }
    });
  });
});

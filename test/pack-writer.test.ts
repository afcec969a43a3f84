import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CairnError } from '../common/errors.js';
import { hash, toHex } from '../common/hash.js';
import { encodeTrailer, parsePack } from '../common/pack-format.js';
import type { BlobKind } from '../common/messages.js';
import { FileStore } from '../server/file-store.js';
import type { ObjectStore, ObjectWriter } from '../server/object-store.js';
import { IndexDb } from '../server/index-db.js';
import { PackWriter, type VerifiedBlob } from '../server/pack-writer.js';
import { cleanupTmp, tmpDir } from './harness.js';
import { listAll } from './store-contract.js';
import { randomBytes } from './tree-gen.js';

afterAll(() => cleanupTmp());

const OPTS = { packSize: 1024 * 1024, uploadConcurrency: 2, maxQueuedPacks: 2, segmentEvery: 64 };

function blob(kind: BlobKind, data: Buffer): VerifiedBlob {
  return { id: hash(data), kind, compressed: false, rawLength: data.length, data };
}

/** Blob sizes around the 1 MiB write buffer and the 1 MiB pack target, and many small ones. */
function blobs(): VerifiedBlob[] {
  const sizes = [3, 70_000, 1024 * 1024 + 5, 400_000, 4 * 1024 * 1024, ...Array.from({ length: 300 }, (_, i) => 100 + i * 37), 900_000];
  return sizes.map((n, i) => blob(i % 7 === 3 ? 'TREE' : 'DATA', randomBytes(n, 1000 + i)));
}

describe('PackWriter on the folder store', () => {
  it('writes each pack as its blobs back to back and their trailer, under the BLAKE3 of those bytes', async () => {
    const dir = tmpDir();
    const store = new FileStore(path.join(dir, 'store'));
    const index = await IndexDb.open(path.join(dir, 'index'));
    try {
      const writer = new PackWriter(store, index, OPTS);
      const sent = blobs();
      const originals = new Map(sent.map((b) => [toHex(b.id), Buffer.from(b.data)]));
      for (const b of sent) {
        await writer.add(b);
        // add() has taken the bytes: a caller reusing its buffer must not change the pack.
        b.data.fill(0);
      }
      await writer.flush();

      const seen = new Set<string>();
      const packs = await listAll(store, 'packs/');
      expect(packs.length).toBeGreaterThan(4);
      for (const { key } of packs) {
        const bytes = await store.get(key);
        expect(toHex(hash(bytes))).toBe(path.basename(key));
        const entries = parsePack(bytes, key);
        // The layout a pack built in one buffer had: blobs from offset 0 without gaps, then the trailer.
        const blobBytes = entries.map((e) => originals.get(toHex(e.id))!);
        expect(bytes.equals(Buffer.concat([...blobBytes, encodeTrailer(entries)]))).toBe(true);
        expect(new Set(entries.map((e) => e.kind)).size).toBe(1);
        for (const e of entries) seen.add(toHex(e.id));
      }
      expect(seen).toEqual(new Set(originals.keys()));
      const locs = await index.locate(sent.map((b) => b.id));
      expect(locs.every((l) => l !== undefined)).toBe(true);
      expect(sent.some((b) => writer.isPending(toHex(b.id)))).toBe(false);
      expect((await fs.readdir(path.join(dir, 'store/packs'))).filter((n) => n.includes('.tmp-'))).toEqual([]);
    } finally {
      await index.close();
    }
  });

  it('a pack that cannot be written fails the next flush, and its blobs are not pending but can be added again', async () => {
    const dir = tmpDir();
    const root = path.join(dir, 'store');
    // A file where the store's directory should be: every write under it fails (ENOTDIR).
    await fs.writeFile(root, 'in the way');
    const store = new FileStore(root);
    const index = await IndexDb.open(path.join(dir, 'index'));
    try {
      const writer = new PackWriter(store, index, OPTS);
      const sent = blobs().slice(0, 4);
      for (const b of sent) await writer.add(blob(b.kind, Buffer.from(b.data)));
      await expect(writer.flush()).rejects.toBeInstanceOf(CairnError);
      for (const b of sent) expect(writer.isPending(toHex(b.id))).toBe(false);
      expect(await index.locate(sent.map((b) => b.id))).toEqual(sent.map(() => undefined));

      await fs.rm(root);
      for (const b of sent) await writer.add(b);
      await writer.flush();
      expect((await index.locate(sent.map((b) => b.id))).every((l) => l !== undefined)).toBe(true);
      const packs = await listAll(store, 'packs/');
      for (const { key } of packs) expect(toHex(hash(await store.get(key)))).toBe(path.basename(key));
      expect(packs.length).toBeGreaterThan(0);
    } finally {
      await index.close();
    }
  });

  it('a pack whose write failed takes no more blobs: the next blob starts a pack that is stored', async () => {
    const dir = tmpDir();
    const files = new FileStore(path.join(dir, 'store'));
    let writers = 0;
    // The first pack's first write fails, as a full disk would; every later writer works.
    const store: ObjectStore = Object.assign(Object.create(files) as ObjectStore, {
      async openWriter(under: string): Promise<ObjectWriter> {
        const w = await files.openWriter(under);
        if (writers++ > 0) return w;
        return { ...w, write: () => Promise.reject(new Error('ENOSPC: no space left on device')), commit: (k: string) => w.commit(k), abort: () => w.abort() };
      },
    });
    const index = await IndexDb.open(path.join(dir, 'index'));
    try {
      const writer = new PackWriter(store, index, OPTS);
      const [lost, kept] = [blob('DATA', randomBytes(1000, 1)), blob('DATA', randomBytes(1000, 2))];
      await writer.add(lost);
      await writer.add(kept);
      await expect(writer.flush()).rejects.toThrow(/no space left/);
      expect(writer.isPending(toHex(lost.id))).toBe(false);
      const [lostAt, keptAt] = await index.locate([lost.id, kept.id]);
      expect(lostAt).toBeUndefined();
      expect(keptAt).toBeDefined();
      expect(writers).toBe(2);
    } finally {
      await index.close();
    }
  });
});

import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Code } from '../common/errors.js';
import type { ObjectInfo, ObjectStore } from '../server/object-store.js';

export type StoreFactory = () => Promise<{ store: ObjectStore; cleanup: () => Promise<void> }>;

const MANY = 1100;

export async function listAll(store: ObjectStore, prefix: string): Promise<ObjectInfo[]> {
  const out: ObjectInfo[] = [];
  for await (const o of store.list(prefix)) out.push(o);
  return out.sort((a, b) => a.key.localeCompare(b.key));
}

/** Runs `fn` over `items` with at most `width` in flight. */
export async function inBatches<T>(items: T[], width: number, fn: (item: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(width, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

async function expectCode(p: Promise<unknown>, code: Code, mention?: string): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e as { code?: unknown; message?: string },
  );
  expect(err, 'expected the call to fail').toBeDefined();
  expect(err!.code).toBe(code);
  if (mention !== undefined) expect(err!.message).toContain(mention);
}

/** The behaviour every ObjectStore must have; see server/object-store.ts. */
export function objectStoreContract(name: string, make: StoreFactory): void {
  describe(`ObjectStore contract: ${name}`, () => {
    describe('single objects', () => {
      let store: ObjectStore;
      let cleanup: () => Promise<void>;
      beforeEach(async () => ({ store, cleanup } = await make()));
      afterEach(async () => {
        await store?.close();
        await cleanup?.();
      });

      it('round-trips binary data of 0 bytes, every byte value, and 5 MiB', async () => {
        const objects = {
          'blobs/empty': Buffer.alloc(0),
          'blobs/bytes': Buffer.from(Array.from({ length: 512 }, (_, i) => i % 256)),
          'blobs/big': randomBytes(5 * 1024 * 1024),
        };
        for (const [key, data] of Object.entries(objects)) await store.put(key, data);
        for (const [key, data] of Object.entries(objects)) {
          const got = await store.get(key);
          expect(got.length).toBe(data.length);
          expect(got.equals(data)).toBe(true);
        }
      });

      it('put of the same key and bytes again is harmless', async () => {
        const data = randomBytes(1000);
        await store.put('packs/ab/same', data);
        await store.put('packs/ab/same', data);
        expect((await store.get('packs/ab/same')).equals(data)).toBe(true);
      });

      it('get and getRange of a missing key fail with NOT_FOUND naming the key', async () => {
        await expectCode(store.get('snapshots/missing'), Code.NOT_FOUND, 'snapshots/missing');
        await expectCode(store.getRange('packs/zz/missing', 0, 10), Code.NOT_FOUND, 'packs/zz/missing');
      });

      it('getRange returns the start, middle and end of an object', async () => {
        const data = randomBytes(1024 * 1024 + 17);
        await store.put('packs/cd/ranged', data);
        const n = data.length;
        for (const [offset, length] of [
          [0, 100],
          [400_000, 65_536],
          [n - 100, 100],
          [0, n],
          [n - 1, 1],
        ] as const) {
          const got = await store.getRange('packs/cd/ranged', offset, length);
          expect(got.equals(data.subarray(offset, offset + length)), `range ${offset}+${length}`).toBe(true);
        }
      });

      it('getRange past the end fails with DATA_LOSS', async () => {
        await store.put('packs/cd/short', randomBytes(100));
        await expectCode(store.getRange('packs/cd/short', 50, 100), Code.DATA_LOSS, 'packs/cd/short');
      });

      it('head gives the size of an object, and undefined for a missing one', async () => {
        await store.put('index/one', randomBytes(4321));
        expect(await store.head('index/one')).toEqual({ key: 'index/one', size: 4321 });
        expect(await store.head('index/two')).toBeUndefined();
      });

      it('list yields only keys under the prefix, with sizes', async () => {
        const keys = ['packs/aa/1', 'packs/bb/2', 'packsX/3', 'snapshots/4', 'config'];
        await Promise.all(keys.map((k, i) => store.put(k, Buffer.alloc(i + 1, i))));
        expect(await listAll(store, 'packs/')).toEqual([
          { key: 'packs/aa/1', size: 1 },
          { key: 'packs/bb/2', size: 2 },
        ]);
        expect((await listAll(store, '')).map((o) => o.key)).toEqual([...keys].sort());
        expect((await listAll(store, 'snap')).map((o) => o.key)).toEqual(['snapshots/4']);
        expect(await listAll(store, 'locks/')).toEqual([]);
      });

      it('keys with nested slashes round-trip and list', async () => {
        const key = 'a/b/c/d/e/f.bin';
        const data = randomBytes(333);
        await store.put(key, data);
        expect((await store.get(key)).equals(data)).toBe(true);
        expect(await listAll(store, 'a/b/')).toEqual([{ key, size: 333 }]);
      });

      it('rejects keys that are not plain relative paths with INVALID_ARGUMENT', async () => {
        for (const key of ['', '/abs', 'a/../b', 'a//b', './a']) {
          await expectCode(store.put(key, Buffer.alloc(1)), Code.INVALID_ARGUMENT);
        }
      });

      it('putIfAbsent stores only the first time', async () => {
        const first = Buffer.from('writer-1');
        expect(await store.putIfAbsent('locks/writer', first)).toBe(true);
        expect(await store.putIfAbsent('locks/writer', Buffer.from('writer-2'))).toBe(false);
        expect((await store.get('locks/writer')).equals(first)).toBe(true);
      });

      it('delete removes keys and ignores missing ones', async () => {
        await store.put('snapshots/x', Buffer.from('x'));
        await store.delete(['snapshots/x', 'snapshots/never-existed']);
        await store.delete([]);
        expect(await store.head('snapshots/x')).toBeUndefined();
      });

      it('counts() grows with each kind of request and the bytes moved', async () => {
        const c0 = store.counts();
        await store.put('index/c', Buffer.alloc(1000, 1));
        await store.get('index/c');
        await store.head('index/c');
        await listAll(store, 'index/');
        await store.delete(['index/c']);
        const c1 = store.counts();
        for (const kind of ['put', 'get', 'head', 'list', 'delete'] as const) {
          expect(c1[kind], kind).toBeGreaterThan(c0[kind]);
        }
        expect(c1.bytesUp - c0.bytesUp).toBeGreaterThanOrEqual(1000);
        expect(c1.bytesDown - c0.bytesDown).toBeGreaterThanOrEqual(1000);
      });

      it('an object writer publishes the bytes written, in pieces of any size, under the key given at commit and not before', async () => {
        // Larger than any write buffer, smaller, empty, and one byte: every path through a writer.
        const pieces = [randomBytes(3), Buffer.alloc(0), randomBytes(1536 * 1024), randomBytes(700 * 1024), randomBytes(1)];
        const expected = Buffer.concat(pieces);
        const c0 = store.counts();
        const writer = await store.openWriter('packs');
        for (const p of pieces) {
          await writer.write(p);
          // The caller may reuse its buffer once write resolves.
          p.fill(0xee);
        }
        expect(await listAll(store, '')).toEqual([]);
        expect(await store.head('packs/ef/streamed')).toBeUndefined();
        await writer.commit('packs/ef/streamed');
        expect((await store.get('packs/ef/streamed')).equals(expected)).toBe(true);
        expect(await listAll(store, '')).toEqual([{ key: 'packs/ef/streamed', size: expected.length }]);
        expect(store.counts().put - c0.put).toBeGreaterThanOrEqual(1);
        expect(store.counts().bytesUp - c0.bytesUp).toBeGreaterThanOrEqual(expected.length);
      });

      it("an object writer's abort leaves nothing, not even for deleteUnfinished to find", async () => {
        const writer = await store.openWriter('packs');
        await writer.write(randomBytes(2 * 1024 * 1024));
        await writer.abort();
        expect(await listAll(store, '')).toEqual([]);
        expect(await store.deleteUnfinished('')).toBe(0);
      });

      it("an object writer's commit under an invalid key fails with INVALID_ARGUMENT and abort still cleans up", async () => {
        const writer = await store.openWriter('packs');
        await writer.write(randomBytes(1000));
        await expectCode(writer.commit('packs/../escape'), Code.INVALID_ARGUMENT);
        await writer.abort();
        expect(await listAll(store, '')).toEqual([]);
        expect(await store.deleteUnfinished('')).toBe(0);
      });

      it('deleteUnfinished leaves finished objects alone, and an unfinished write never shows as one', async () => {
        await store.put('packs/aa/kept', Buffer.from('kept'));
        const dead = await store.openWriter('packs');
        await dead.write(randomBytes(2 * 1024 * 1024));
        expect(await listAll(store, '')).toEqual([{ key: 'packs/aa/kept', size: 4 }]);
        await store.deleteUnfinished('');
        expect(await listAll(store, '')).toEqual([{ key: 'packs/aa/kept', size: 4 }]);
        expect((await store.get('packs/aa/kept')).toString()).toBe('kept');
        await dead.abort();
      });
    });

    describe(`more than 1000 keys (${MANY})`, () => {
      let store: ObjectStore;
      let cleanup: () => Promise<void>;
      const keys = Array.from({ length: MANY }, (_, i) => `packs/${(i % 256).toString(16).padStart(2, '0')}/obj-${i}`);
      beforeAll(async () => {
        ({ store, cleanup } = await make());
        await inBatches(keys, 32, (k) => store.put(k, Buffer.from(k)));
        await store.put('packsX/outside', Buffer.from('x'));
      });
      afterAll(async () => {
        await store?.close();
        await cleanup?.();
      });

      it('list pages through all of them', async () => {
        const listed = await listAll(store, 'packs/');
        expect(listed.length).toBe(MANY);
        expect(new Set(listed.map((o) => o.key))).toEqual(new Set(keys));
        for (const o of listed) expect(o.size).toBe(Buffer.byteLength(o.key));
      });

      it('delete removes all of them in one call', async () => {
        await store.delete(keys);
        expect(await listAll(store, 'packs/')).toEqual([]);
        expect((await listAll(store, '')).map((o) => o.key)).toEqual(['packsX/outside']);
      });
    });
  });
}

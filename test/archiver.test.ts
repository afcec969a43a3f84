import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Chunker, DEFAULT_CHUNKER_PARAMS } from '../common/chunker.js';
import { CairnError, Code } from '../common/errors.js';
import { ExcludeMatcher } from '../client/excludes.js';
import type { BlobSink } from '../client/archiver.js';
import { cleanupTmp, tmpDir } from './harness.js';

/** From the build: the archiver's small-file reader runs worker threads (`npm test` builds first). */
async function load() {
  const { Archiver } = (await import('../dist/client/archiver.js')) as typeof import('../client/archiver.js');
  const { SmallFileReader } = (await import('../dist/client/small-file-reader.js')) as typeof import('../client/small-file-reader.js');
  return { Archiver, SmallFileReader };
}

describe('Archiver', () => {
  afterAll(() => cleanupTmp());

  it('fails the walk with the sink\'s error when an upload fails while the walk is elsewhere, never as an unhandled rejection', async () => {
    const root = tmpDir('cairn-archiver-');
    // The root's small files (a*) are queued first, and their offers fail while the walk is
    // inside z/, whose directories' flushes send the root's batch along with their own.
    for (let i = 0; i < 20; i++) await fs.writeFile(path.join(root, `a${i}`), `small ${i}`);
    for (let d = 0; d < 2000; d++) await fs.mkdir(path.join(root, 'z', `d${d}`), { recursive: true });
    const refused = new CairnError(Code.UNAVAILABLE, 'the upload stream broke');
    const sink: BlobSink = {
      offer: async () => undefined,
      offerPacked: async () => {
        throw refused;
      },
    };
    const { Archiver, SmallFileReader } = await load();
    const small = new SmallFileReader(3, DEFAULT_CHUNKER_PARAMS.minSize, 1);
    // Its worker started, so the root's batch comes back while the walk is still in z/.
    const warm = small.read(path.join(root, 'a0'), 7);
    small.flush();
    const w = await warm;
    if (w.kind === 'read') w.done();
    const excludes = await ExcludeMatcher.create({ excludes: [], includes: [], excludeFiles: [], defaultExcludes: true, excludeCaches: true });
    const archiver = new Archiver({ chunker: new Chunker(DEFAULT_CHUNKER_PARAMS), sink, small, excludes, trees: { readParent: async () => [], made: () => undefined } });
    const unhandled: unknown[] = [];
    const onUnhandled = (err: unknown) => unhandled.push(err);
    process.on('unhandledRejection', onUnhandled);
    try {
      await expect(archiver.archive([root], undefined)).rejects.toBe(refused);
      await new Promise((r) => setTimeout(r, 50));
    } finally {
      process.off('unhandledRejection', onUnhandled);
      await small.close();
    }
    expect(unhandled).toEqual([]);
  });
});

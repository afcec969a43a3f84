import { promises as fs, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileStore } from '../server/file-store.js';
import { OpenFiles } from '../server/open-files.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'cairn-open-files-'));
});
afterEach(() => rm(dir, { recursive: true, force: true }));

const openFds = () => readdirSync('/proc/self/fd').length;
const readAll = (files: OpenFiles, file: string) =>
  files.use(file, async (fh) => {
    const buf = Buffer.alloc(64);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    return buf.subarray(0, bytesRead).toString();
  });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Replaces the file under `file` with a new inode, as a rename over it does. */
async function replace(file: string, text: string): Promise<void> {
  await fs.writeFile(`${file}.new`, text);
  await fs.rename(`${file}.new`, file);
}

describe('OpenFiles', () => {
  it('keeps a handle across reads until the file is retired', async () => {
    const files = new OpenFiles();
    const f = path.join(dir, 'a');
    await fs.writeFile(f, 'old');
    expect(await readAll(files, f)).toBe('old');
    await replace(f, 'new');
    expect(await readAll(files, f)).toBe('old');
    files.retire(f);
    expect(await readAll(files, f)).toBe('new');
    await files.close();
  });

  it('keeps at most max unused handles open, and closes them when idle', async () => {
    const files = new OpenFiles(2, 50);
    const before = openFds();
    for (let i = 0; i < 6; i++) {
      await fs.writeFile(path.join(dir, `f${i}`), `${i}`);
      expect(await readAll(files, path.join(dir, `f${i}`))).toBe(`${i}`);
    }
    await sleep(20);
    expect(openFds() - before).toBeLessThanOrEqual(2);
    await sleep(200);
    expect(openFds()).toBe(before);
  });

  it('does not remember a failed open', async () => {
    const files = new OpenFiles();
    const f = path.join(dir, 'late');
    await expect(readAll(files, f)).rejects.toMatchObject({ code: 'ENOENT' });
    await fs.writeFile(f, 'here');
    expect(await readAll(files, f)).toBe('here');
    await files.close();
  });
});

describe('FileStore handle reuse', () => {
  it('never serves a deleted object from a handle kept open', async () => {
    const store = new FileStore(dir);
    await store.put('packs/ab/x', Buffer.from('first'));
    expect((await store.getRange('packs/ab/x', 0, 5)).toString()).toBe('first');
    await store.delete(['packs/ab/x']);
    await expect(store.getRange('packs/ab/x', 0, 5)).rejects.toMatchObject({ message: expect.stringMatching(/does not exist/) });
    // Written behind the store's back, so only the delete can have dropped the old handle.
    await fs.writeFile(path.join(dir, 'packs/ab/x'), 'other');
    expect((await store.getRange('packs/ab/x', 0, 5)).toString()).toBe('other');
    await store.close();
  });

  it('reads an object replaced by put afresh', async () => {
    const store = new FileStore(dir);
    await store.put('k', Buffer.from('one'));
    expect((await store.getRange('k', 0, 3)).toString()).toBe('one');
    await store.put('k', Buffer.from('two'));
    expect((await store.getRange('k', 0, 3)).toString()).toBe('two');
    await store.close();
  });
});

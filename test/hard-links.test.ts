import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HardLinks } from '../client/hard-links.js';
import { emptyNode } from '../common/tree.js';
import { canMountTmpfs, cleanupTmp, cliJson, ROOT, runCli, startServer, tmpDir, type ServerHandle } from './harness.js';
import { randomBytes, writeFile } from './tree-gen.js';

const MiB = 1024 * 1024;
const CLI_JS = path.join(ROOT, 'dist/client/cli-start.js');

interface RestoreOut {
  plan: { filesToWrite: number; bytesToWrite: number; filesLinked: number };
  stats: { files: number; bytes: number; filesSkippedSame: number; filesKeptLocal: number; hardLinks: number; hardLinksAsCopies: number };
}

const ino = async (p: string) => (await fs.stat(p)).ino;

/**
 * A source tree whose model is one file at three paths and whose notes are one file at two,
 * beside a plain file with the same bytes as the notes (equal content is not a link).
 */
async function linkedTree(root: string): Promise<{ model: Buffer; notes: Buffer }> {
  const model = randomBytes(3 * MiB, 11);
  const notes = Buffer.from('epoch 7: loss 0.31\n');
  await writeFile(path.join(root, 'a/model.bin'), model);
  await fs.mkdir(path.join(root, 'b'));
  await fs.mkdir(path.join(root, 'c'));
  await fs.link(path.join(root, 'a/model.bin'), path.join(root, 'b/model.bin'));
  await fs.link(path.join(root, 'a/model.bin'), path.join(root, 'c/model-copy.bin'));
  await writeFile(path.join(root, 'notes.txt'), notes);
  await fs.link(path.join(root, 'notes.txt'), path.join(root, 'notes-link.txt'));
  await writeFile(path.join(root, 'plain.txt'), notes);
  return { model, notes };
}

describe('hard links, snapshot and restore', () => {
  let server: ServerHandle;
  const cli = (args: string[]) => runCli(args, { server: server.addr });
  const json = <T>(args: string[]) => cliJson<T>(args, { server: server.addr });

  beforeAll(async () => {
    server = await startServer();
  });
  afterAll(async () => {
    await server?.stop();
    cleanupTmp();
  });

  it('restores the paths of one file as one file again, writing its bytes once', async () => {
    const src = path.join(tmpDir(), 'linked');
    const { model, notes } = await linkedTree(src);
    const snap = await json<{ stats: { files: number; bytes: number; bytesRead: number } }>(['snapshot', src, '--dataset', 'linked', '--host', 'h']);
    // The model's bytes read once for its three paths; small files (the notes) are read per path.
    expect(snap.stats).toMatchObject({ files: 6, bytes: 3 * model.length + 3 * notes.length, bytesRead: model.length + 3 * notes.length });

    const target = path.join(tmpDir(), 'linked-out');
    const r = await json<RestoreOut>(['restore', '--dataset', 'linked', target]);
    const modelIno = await ino(path.join(target, 'a/model.bin'));
    expect(await ino(path.join(target, 'b/model.bin'))).toBe(modelIno);
    expect(await ino(path.join(target, 'c/model-copy.bin'))).toBe(modelIno);
    expect((await fs.stat(path.join(target, 'a/model.bin'))).nlink).toBe(3);
    expect(await ino(path.join(target, 'notes-link.txt'))).toBe(await ino(path.join(target, 'notes.txt')));
    expect(await ino(path.join(target, 'plain.txt'))).not.toBe(await ino(path.join(target, 'notes.txt')));
    for (const p of ['a/model.bin', 'b/model.bin', 'c/model-copy.bin']) expect((await fs.readFile(path.join(target, p))).equals(model), p).toBe(true);
    for (const p of ['notes.txt', 'notes-link.txt', 'plain.txt']) expect((await fs.readFile(path.join(target, p))).equals(notes), p).toBe(true);
    expect(r.stats).toMatchObject({ files: 6, hardLinks: 3, hardLinksAsCopies: 0 });
    // Into a new directory the plan is the snapshot's totals, which know no links.
    expect(r.plan).toMatchObject({ estimated: true, filesLinked: 0 });
    // The model's bytes once, the notes twice (notes.txt and plain.txt).
    expect(r.stats.bytes).toBe(model.length + 2 * notes.length);
    // Nothing left behind: no temporary names.
    expect((await fs.readdir(path.join(target, 'b'))).sort()).toEqual(['model.bin']);

    // Again into the same target: everything is already there.
    const again = await json<RestoreOut>(['restore', '--dataset', 'linked', target]);
    expect(again.stats).toMatchObject({ files: 6, filesSkippedSame: 6, bytes: 0, hardLinks: 0 });
    expect(await ino(path.join(target, 'b/model.bin'))).toBe(modelIno);

    // A restore resumed after c/ was lost: the model's other names are its own paths in the
    // target, so c/ is linked to it again, not written as a copy.
    await fs.rm(path.join(target, 'c'), { recursive: true });
    const resumed = await json<RestoreOut>(['restore', '--dataset', 'linked', target]);
    expect(resumed.stats).toMatchObject({ hardLinks: 1, hardLinksAsCopies: 0, bytes: 0 });
    expect(await ino(path.join(target, 'c/model-copy.bin'))).toBe(modelIno);
    expect((await fs.stat(path.join(target, 'a/model.bin'))).nlink).toBe(3);
  });

  it('a dry run counts the links as files to write that take no space', async () => {
    const src = path.join(tmpDir(), 'linked-dry');
    const { model, notes } = await linkedTree(src);
    expect((await cli(['snapshot', src, '--dataset', 'linked-dry', '--host', 'h'])).code).toBe(0);
    const target = path.join(tmpDir(), 'linked-dry-out');
    const dry = await json<RestoreOut>(['restore', '--dataset', 'linked-dry', '--dry-run', target]);
    expect(dry.plan).toMatchObject({ filesToWrite: 6, filesLinked: 3, bytesToWrite: model.length + 2 * notes.length });
    const text = await cli(['restore', '--dataset', 'linked-dry', '--dry-run', target]);
    expect(text.stdout).toMatch(/write {6}6 files \(3 of them hard links to another\), 3\.00 MiB/);
    await expect(fs.stat(target)).rejects.toThrow();
  });

  it('never links to a local file kept in place of the first path: the other paths get the snapshot\'s bytes', async () => {
    const src = path.join(tmpDir(), 'linked-kept');
    const { model } = await linkedTree(src);
    expect((await cli(['snapshot', src, '--dataset', 'linked-kept', '--host', 'h'])).code).toBe(0);
    const target = path.join(tmpDir(), 'linked-kept-out');
    const local = Buffer.from('a newer model trained on this instance');
    await writeFile(path.join(target, 'a/model.bin'), local);

    const r = await runCli(['restore', '--dataset', 'linked-kept', target], { server: server.addr });
    expect(r.code).toBe(3);
    expect(r.stdout).toMatch(/hard links 1 made, 2 paths written as separate files \(their first path holds a local file that differs or has other names/);
    expect((await fs.readFile(path.join(target, 'a/model.bin'))).equals(local)).toBe(true);
    expect((await fs.readFile(path.join(target, 'b/model.bin'))).equals(model)).toBe(true);
    expect((await fs.readFile(path.join(target, 'c/model-copy.bin'))).equals(model)).toBe(true);
    expect(await ino(path.join(target, 'b/model.bin'))).not.toBe(await ino(path.join(target, 'a/model.bin')));
    // The notes' link is made as usual.
    expect(await ino(path.join(target, 'notes-link.txt'))).toBe(await ino(path.join(target, 'notes.txt')));
    // Again: nothing is written, so nothing is counted as written apart.
    const rerun = await runCli(['--json', 'restore', '--dataset', 'linked-kept', target], { server: server.addr });
    expect(rerun.code).toBe(3);
    const again = JSON.parse(rerun.stdout.trim()) as RestoreOut;
    expect(again.stats).toMatchObject({ bytes: 0, hardLinks: 0, hardLinksAsCopies: 0, filesKeptLocal: 1 });
  });

  it('never links to a local file that has other names, even one holding the snapshot\'s bytes', async () => {
    const src = path.join(tmpDir(), 'linked-outside');
    const { model } = await linkedTree(src);
    expect((await cli(['snapshot', src, '--dataset', 'linked-outside', '--host', 'h'])).code).toBe(0);
    const target = path.join(tmpDir(), 'linked-outside-out');
    // The user's a/model.bin holds the snapshot's bytes and is also a file outside the target.
    const outside = path.join(tmpDir(), 'outside-model.bin');
    await fs.writeFile(outside, model);
    await fs.mkdir(path.join(target, 'a'), { recursive: true });
    await fs.link(outside, path.join(target, 'a/model.bin'));

    const r = await json<RestoreOut>(['restore', '--dataset', 'linked-outside', target]);
    expect(r.stats).toMatchObject({ filesSkippedSame: 1, hardLinksAsCopies: 2 });
    expect((await fs.stat(outside)).nlink).toBe(2);
    // b and c get the snapshot's bytes in files of their own: the first path was not this restore's.
    for (const p of ['b/model.bin', 'c/model-copy.bin']) {
      expect(await ino(path.join(target, p))).not.toBe(await ino(outside));
      expect((await fs.readFile(path.join(target, p))).equals(model)).toBe(true);
    }
  });

  it('with --include, the first included path of a file is the one the others link to', async () => {
    const src = path.join(tmpDir(), 'linked-incl');
    const { model } = await linkedTree(src);
    expect((await cli(['snapshot', src, '--dataset', 'linked-incl', '--host', 'h'])).code).toBe(0);
    const target = path.join(tmpDir(), 'linked-incl-out');
    const r = await json<RestoreOut>(['restore', '--dataset', 'linked-incl', '--include', 'b/**', '--include', 'c/**', target]);
    await expect(fs.stat(path.join(target, 'a'))).rejects.toThrow();
    expect(await ino(path.join(target, 'c/model-copy.bin'))).toBe(await ino(path.join(target, 'b/model.bin')));
    expect((await fs.readFile(path.join(target, 'c/model-copy.bin'))).equals(model)).toBe(true);
    expect(r.stats).toMatchObject({ files: 2, hardLinks: 1, bytes: model.length });
  });

  it.skipIf(!canMountTmpfs)('writes a copy where the file system refuses the link, and plans the space a file takes once', async () => {
    const src = path.join(tmpDir(), 'linked-xdev');
    const { model, notes } = await linkedTree(src);
    expect((await cli(['snapshot', src, '--dataset', 'linked-xdev', '--host', 'h'])).code).toBe(0);
    const mnt = tmpDir('cairn-links-disk-');
    // A 5 MiB tmpfs holds the model once (the snapshot's summary counts it three times, 9 MiB),
    // and another tmpfs at b/ makes linking there cross file systems (EXDEV).
    const script = [
      'mount -t tmpfs -o size=5m tmpfs "$1" || exit 9',
      '"$2" "$3" --json restore --dataset linked-xdev "$1/fresh" || exit 8',
      'rm -r "$1/fresh"',
      'mkdir -p "$1/out/b" && mount -t tmpfs -o size=5m tmpfs "$1/out/b" || exit 9',
      '"$2" "$3" --json restore --dataset linked-xdev "$1/out"; rc=$?',
      'cmp "$4" "$1/out/b/model.bin" && echo "b same"',
      'stat -c %h "$1/out/a/model.bin"',
      'exit $rc',
    ].join('\n');
    const model3 = path.join(src, 'a/model.bin');
    const r = spawnSync('unshare', ['-rm', 'sh', '-c', script, 'sh', mnt, process.execPath, CLI_JS, model3], { env: { ...process.env, CAIRN_SERVER: server.addr }, encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const [freshReport, report, same, links] = r.stdout.trim().split('\n');
    // Into an empty directory: planned from the snapshot's totals (9 MiB), then walked (3 MiB).
    const fresh = JSON.parse(freshReport) as RestoreOut;
    expect(fresh.plan).toMatchObject({ bytesToWrite: model.length + 2 * notes.length, filesLinked: 3, estimated: false });
    expect(fresh.stats).toMatchObject({ hardLinks: 3, hardLinksAsCopies: 0 });
    const out = JSON.parse(report) as RestoreOut;
    expect(out.stats).toMatchObject({ hardLinks: 2, hardLinksAsCopies: 1 });
    expect(out.stats.bytes).toBe(2 * model.length + 2 * notes.length);
    expect(same).toBe('b same');
    // a/model.bin and c/model-copy.bin: one file; b's copy is another.
    expect(links).toBe('2');
  });
});

describe('HardLinks', () => {
  const file = (inode: string, links: number, chunk: number) => ({ ...emptyNode('f', 'FILE'), inode, links, size: '4', mtimeNs: '5', chunks: [Buffer.alloc(32, chunk)] });

  it('links a later path only to a first path of the same inode and the same file, once that one is restored', () => {
    const h = new HardLinks();
    expect(h.linkOf('/t/a', file('7', 2, 1))).toBeUndefined();
    expect(h.linkOf('/t/b', file('7', 2, 1))).toEqual({ linkTo: '/t/a' });
    expect(h.isRestored(file('7', 2, 1))).toBe(false);
    h.restored('/t/b', file('7', 2, 1));
    expect(h.isRestored(file('7', 2, 1))).toBe(false);
    h.restored('/t/a', file('7', 2, 1));
    expect(h.isRestored(file('7', 2, 1))).toBe(true);
    // Same inode number, other bytes (another file system): restored on its own.
    expect(h.linkOf('/t/c', file('7', 2, 9))).toBeUndefined();
    // One link, or no inode: never tracked.
    expect(h.linkOf('/t/d', file('8', 1, 1))).toBeUndefined();
    expect(h.linkOf('/t/e', file('8', 1, 1))).toBeUndefined();
    expect(h.linkOf('/t/f', file('0', 2, 1))).toBeUndefined();
    expect(h.linkOf('/t/g', file('0', 2, 1))).toBeUndefined();
  });

  it('tracks a bounded number of paths; the rest are restored as files of their own', () => {
    const h = new HardLinks(3);
    expect(h.linkOf('/t/a', file('1', 2, 1))).toBeUndefined();
    expect(h.linkOf('/t/b', file('1', 2, 1))).toEqual({ linkTo: '/t/a' });
    expect(h.linkOf('/t/c', file('2', 2, 2))).toBeUndefined();
    expect(h.linkOf('/t/d', file('2', 2, 2))).toBe('copy');
    expect(h.linkOf('/t/e', file('1', 2, 1))).toBe('copy');
    // A plain file is never a copy of anything.
    expect(h.linkOf('/t/f', file('3', 1, 3))).toBeUndefined();
  });
});

describe('restore plan text', () => {
  it('says a plan from the snapshot\'s totals is an upper bound, and a walked one how many files are links', async () => {
    const { describePlan } = await import('../client/plans.js');
    const base = { filesToWrite: 600, bytesToWrite: 600 * MiB, filesReplaced: 0, filesLinked: 0, filesKeptLocal: 0, filesIdentical: 0, filesystem: '/data', freeBytes: 10 * 1024 * MiB };
    expect(describePlan({ ...base, estimated: true })).toContain("write      600 files, 600 MiB at most (the snapshot's totals: a hard-linked file counts once per path)");
    expect(describePlan({ ...base, bytesToWrite: 200 * MiB, filesLinked: 400, estimated: false })).toContain('write      600 files (400 of them hard links to another), 200 MiB\n');
  });
});

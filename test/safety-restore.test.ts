import { spawn, spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canMountTmpfs, cleanupTmp, cliJson, ROOT, runCli, startServer, tmpDir, type ServerHandle } from './harness.js';
import { describeTree, randomBytes, writeFile } from './tree-gen.js';

const MiB = 1024 * 1024;
const CLI_JS = path.join(ROOT, 'dist/client/cli-start.js');

interface Plan {
  filesToWrite: number;
  bytesToWrite: number;
  filesReplaced: number;
  filesKeptLocal: number;
  filesIdentical: number;
}

interface RestoreOut {
  plan: Plan;
  stats: { files: number; filesSkippedSame: number; filesKeptLocal: number };
}

/** A restore killed mid-file leaves its temporary `.name.cairn-restoring-xxxxxxxx`; only finished files count. */
const isTemp = (name: string) => /\.cairn-restoring-[0-9a-f]{8}$/.test(name);


describe('restore safety through the CLI', () => {
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

  it('keeps newer local edits by default, prints the plan first, and replaces them only with --overwrite always', async () => {
    const src = path.join(tmpDir(), 'exp');
    await writeFile(path.join(src, 'results.csv'), 'epoch,loss\n1,0.9\n');
    await writeFile(path.join(src, 'notes.md'), 'from the snapshot');
    await writeFile(path.join(src, 'config.yaml'), 'lr: 0.1');
    await cli(['snapshot', src, '--dataset', 'exp', '--host', 'h']);
    const target = path.join(tmpDir(), 'exp-new-instance');
    expect((await cli(['restore', '--dataset', 'exp', target])).code).toBe(0);
    // New work on the instance, written after the snapshot, and a file deleted locally.
    await fs.writeFile(path.join(target, 'results.csv'), 'epoch,loss\n1,0.9\n2,0.5\n');
    await fs.rm(path.join(target, 'config.yaml'));

    const dry = await json<RestoreOut>(['restore', '--dataset', 'exp', '--dry-run', target]);
    expect(dry.plan).toMatchObject({ filesToWrite: 1, filesKeptLocal: 1, filesIdentical: 1, filesReplaced: 0 });
    await expect(fs.stat(path.join(target, 'config.yaml'))).rejects.toThrow();
    const dryText = await cli(['restore', '--dataset', 'exp', '--dry-run', target]);
    expect(dryText.code).toBe(0);
    expect(dryText.stdout).toContain('write      1 files, 7 B');

    const kept = await cli(['restore', '--dataset', 'exp', target]);
    expect(kept.code).toBe(3);
    const plan = kept.stderr.indexOf('plan:');
    expect(plan).toBeGreaterThanOrEqual(0);
    expect(kept.stderr).toContain('keep       1 local files that are newer or differ');
    expect(kept.stderr.indexOf('kept local:')).toBeGreaterThan(plan);
    expect(await fs.readFile(path.join(target, 'results.csv'), 'utf8')).toBe('epoch,loss\n1,0.9\n2,0.5\n');
    expect(await fs.readFile(path.join(target, 'config.yaml'), 'utf8')).toBe('lr: 0.1');

    // The local edit is newer than the snapshot's copy, so if-newer keeps it too.
    expect((await cli(['restore', '--dataset', 'exp', '--overwrite', 'if-newer', target])).code).toBe(3);
    expect(await fs.readFile(path.join(target, 'results.csv'), 'utf8')).toContain('2,0.5');

    const replaced = await json<RestoreOut>(['restore', '--dataset', 'exp', '--overwrite', 'always', target]);
    expect(replaced.plan).toMatchObject({ filesToWrite: 1, filesReplaced: 1, filesKeptLocal: 0, filesIdentical: 2 });
    expect(await fs.readFile(path.join(target, 'results.csv'), 'utf8')).toBe('epoch,loss\n1,0.9\n');
  });

  it('--overwrite always never deletes a local directory with files, nor a file of the user that looks temporary; long multi-byte names restore', async () => {
    const src = path.join(tmpDir(), 'links');
    await writeFile(path.join(src, 'report.txt'), 'from the snapshot');
    await fs.symlink('/mnt/bucket/ckpt', path.join(src, 'ckpt'));
    // 244 bytes of UTF-8 in 122 characters: a legal name whose 200-character stem made a
    // temporary name past the 255-byte limit.
    const long = 'д'.repeat(120) + '.txt';
    await writeFile(path.join(src, long), 'long name');
    await cli(['snapshot', src, '--dataset', 'links', '--host', 'h']);
    const target = path.join(tmpDir(), 'links-instance');
    await writeFile(path.join(target, 'ckpt/new-run/weights.bin'), 'work in no snapshot');
    await writeFile(path.join(target, '.notes.cairn-20241107'), 'a note of the user');
    // The dry run foresees the same conflict.
    const dry = await cli(['restore', '--dataset', 'links', '--overwrite', 'always', '--dry-run', target]);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stderr).toContain(`would keep local: ${path.join(target, 'ckpt')}: a directory that is not empty stands where the snapshot has a symlink; kept\n`);
    expect(await fs.readFile(path.join(target, 'ckpt/new-run/weights.bin'), 'utf8')).toBe('work in no snapshot');
    const r = await cli(['restore', '--dataset', 'links', '--overwrite', 'always', target]);
    expect(r.code, r.stderr).toBe(3);
    expect(r.stderr).toContain(`${path.join(target, 'ckpt')}: a directory that is not empty stands where the snapshot has a symlink; kept`);
    expect(await fs.readFile(path.join(target, 'ckpt/new-run/weights.bin'), 'utf8')).toBe('work in no snapshot');
    expect(await fs.readFile(path.join(target, '.notes.cairn-20241107'), 'utf8')).toBe('a note of the user');
    expect(await fs.readFile(path.join(target, long), 'utf8')).toBe('long name');
    expect(await fs.readFile(path.join(target, 'report.txt'), 'utf8')).toBe('from the snapshot');
    // An empty directory makes way for the link.
    await fs.rm(path.join(target, 'ckpt/new-run'), { recursive: true });
    expect((await cli(['restore', '--dataset', 'links', '--overwrite', 'always', target])).code).toBe(0);
    expect(await fs.readlink(path.join(target, 'ckpt'))).toBe('/mnt/bucket/ckpt');
  });

  it('a local file where the snapshot has a directory, or a directory where it has a file, is one conflict, not a failed restore', async () => {
    const src = path.join(tmpDir(), 'kinds');
    await writeFile(path.join(src, 'adir/x.txt'), 'x from the snapshot');
    await writeFile(path.join(src, 'bfile'), 'b from the snapshot');
    await writeFile(path.join(src, 'zz.txt'), 'z from the snapshot');
    await writeFile(path.join(src, 'big.bin'), randomBytes(3 * MiB, 21));
    await cli(['snapshot', src, '--dataset', 'kinds', '--host', 'h']);
    const target = path.join(tmpDir(), 'kinds-instance');
    await writeFile(path.join(target, 'adir'), 'a local file');
    await writeFile(path.join(target, 'bfile/notes.txt'), 'local work');
    await writeFile(path.join(target, 'big.bin/notes.txt'), 'more local work');
    const kept = (mode: string) => [
      `${path.join(target, 'bfile')}: a directory stands where the snapshot has a file; kept`,
      `${path.join(target, 'big.bin')}: a directory stands where the snapshot has a file; kept`,
      ...(mode === 'always' ? [] : [`${path.join(target, 'adir')}: a file or link stands where the snapshot has a directory; kept, and nothing restored below it`]),
    ];
    for (const mode of ['never', 'if-newer', 'always']) {
      const dry = await cli(['restore', '--dataset', 'kinds', '--overwrite', mode, '--dry-run', target]);
      expect(dry.code, dry.stderr).toBe(0);
      for (const line of kept(mode)) expect(dry.stderr).toContain(`would keep local: ${line}`);
      // The dry run plans what the real run does: under always, adir goes and adir/x.txt is written.
      expect(dry.stderr.split('\n').filter((l) => l.startsWith('would keep local:'))).toHaveLength(kept(mode).length);
    }
    const planned = await json<{ plan: Plan }>(['restore', '--dataset', 'kinds', '--overwrite', 'always', '--dry-run', target]);
    expect(planned.plan.filesToWrite).toBe(2);
    // A file blocked by the local file adir still had its pattern tried: only the typo is named.
    const typo = await cli(['restore', '--dataset', 'kinds', '--include', 'adir/x.txt', '--include', 'zz.tx', '--dry-run', target]);
    expect(typo.stderr).toContain('warning: --include zz.tx matches nothing');
    expect(typo.stderr).not.toContain('--include adir/x.txt matches nothing');
    for (const mode of ['never', 'always']) {
      const r = await cli(['restore', '--dataset', 'kinds', '--overwrite', mode, target]);
      expect(r.code, r.stderr).toBe(3);
      for (const line of kept(mode)) expect(r.stderr).toContain(`kept local: ${line}`);
      expect(await fs.readFile(path.join(target, 'zz.txt'), 'utf8')).toBe('z from the snapshot');
      expect(await fs.readFile(path.join(target, 'bfile/notes.txt'), 'utf8')).toBe('local work');
      expect(await fs.readFile(path.join(target, 'big.bin/notes.txt'), 'utf8')).toBe('more local work');
      expect(await fs.readFile(path.join(target, 'adir'.concat(mode === 'always' ? '/x.txt' : '')), 'utf8')).toBe(mode === 'always' ? 'x from the snapshot' : 'a local file');
    }
  });

  it('a restore killed with SIGKILL mid-way resumes, skipping every file it had finished', async () => {
    const src = path.join(tmpDir(), 'many');
    const FILES = 40;
    for (let i = 0; i < FILES; i++) await writeFile(path.join(src, `shard-${String(i).padStart(2, '0')}.bin`), randomBytes(3 * MiB, 1000 + i));
    await json(['snapshot', src, '--dataset', 'many', '--host', 'h']);
    const target = path.join(tmpDir(), 'many-restore');

    const proc = spawn(process.execPath, [CLI_JS, 'restore', '--dataset', 'many', target], { env: { ...process.env, CAIRN_SERVER: server.addr }, stdio: 'ignore' });
    const exited = new Promise<NodeJS.Signals | null>((resolve) => proc.once('exit', (_code, signal) => resolve(signal)));
    const finished = async () => (await fs.readdir(target).catch(() => [] as string[])).filter((n) => !isTemp(n));
    while ((await finished()).length < 5 && proc.exitCode === null) await new Promise((r) => setTimeout(r, 5));
    proc.kill('SIGKILL');
    expect(await exited).toBe('SIGKILL');
    const done = (await finished()).length;
    expect(done).toBeGreaterThanOrEqual(5);
    expect(done).toBeLessThan(FILES);

    const resumed = await json<RestoreOut>(['restore', '--dataset', 'many', target]);
    expect(resumed.plan.filesIdentical).toBe(done);
    expect(resumed.stats.filesSkippedSame).toBe(done);
    expect(resumed.stats.files).toBe(FILES);
    const restored = (await describeTree(target)).filter((e) => !isTemp(e.path));
    expect(restored).toEqual(await describeTree(src));
  });

  it.skipIf(!canMountTmpfs)('refuses with RESOURCE_EXHAUSTED, before writing anything, a restore larger than the free space', async () => {
    const src = path.join(tmpDir(), 'too-big');
    await writeFile(path.join(src, 'a.bin'), randomBytes(3 * MiB, 7));
    await writeFile(path.join(src, 'b.bin'), randomBytes(3 * MiB, 8));
    await cli(['snapshot', src, '--dataset', 'too-big', '--host', 'h']);
    const mnt = tmpDir('cairn-small-disk-');
    // A 4 MiB tmpfs seen only by this restore (its own mount namespace); `ls` shows what it left there.
    const script = `mount -t tmpfs -o size=4m tmpfs "$1" && "$2" "$3" restore --dataset too-big "$1/restored"; rc=$?; echo "left: $(ls -A "$1")"; exit $rc`;
    const r = spawnSync('unshare', ['-rm', 'sh', '-c', script, 'sh', mnt, process.execPath, CLI_JS], { env: { ...process.env, CAIRN_SERVER: server.addr }, encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/RESOURCE_EXHAUSTED: restore needs 6\.00 MiB for 2 files in .* but only 4\.00 MiB is free there; nothing was written/);
    expect(r.stdout.trim()).toBe('left:');
  });
});

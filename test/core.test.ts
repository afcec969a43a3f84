import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanupTmp, cliJson, runCli, startServer, tmpDir, type ServerHandle } from './harness.js';
import { describeTree, randomBytes, writeFile } from './tree-gen.js';
import { storeBackends } from './backends.js';

const KiB = 1024;
const MiB = 1024 * 1024;

interface SnapshotOut {
  snapshot: { id: string; summary: { newBytes: string; newChunks: string; files: string } };
  stats: { files: number; bytesRead: number; filesReused: number; errors: number };
  problems: Array<{ path: string; message: string }>;
}

async function makeRoundTripTree(root: string): Promise<void> {
  const old = new Date('1990-05-17T03:04:05.678Z');
  await writeFile(path.join(root, 'empty.txt'), Buffer.alloc(0));
  await writeFile(path.join(root, 'one-byte'), 'x');
  await writeFile(path.join(root, 'bounds/min-1.bin'), randomBytes(256 * KiB - 1, 1));
  await writeFile(path.join(root, 'bounds/min.bin'), randomBytes(256 * KiB, 2));
  await writeFile(path.join(root, 'bounds/min+1.bin'), randomBytes(256 * KiB + 1, 3));
  await writeFile(path.join(root, 'bounds/max-1.bin'), randomBytes(4 * MiB - 1, 4));
  await writeFile(path.join(root, 'bounds/max+1.bin'), randomBytes(4 * MiB + 1, 5));
  await writeFile(path.join(root, 'big/model.bin'), randomBytes(200 * MiB, 6));
  await writeFile(path.join(root, 'text/log.jsonl'), '{"step":1,"loss":0.5}\n'.repeat(50_000));
  await writeFile(path.join(root, 'ünïcødé dir/名前 with spaces.txt'), 'unicode', { mode: 0o600, mtime: old });
  await writeFile(path.join(root, 'modes/exec.sh'), '#!/bin/sh\necho hi\n', { mode: 0o755 });
  await writeFile(path.join(root, 'modes/readonly'), 'ro', { mode: 0o444 });
  await writeFile(path.join(root, 'modes/old'), 'old', { mtime: old });
  await fs.mkdir(path.join(root, 'empty-dir/nested-empty'), { recursive: true });
  await fs.symlink('../text/log.jsonl', path.join(root, 'modes/link-to-log'));
  await fs.symlink('/nonexistent/absolute/target', path.join(root, 'dangling'));
  await fs.utimes(path.join(root, 'empty-dir'), old, old);
}

describe.each(storeBackends())('core round trip on the $name store', (backend) => {
  let server: ServerHandle;
  let src: string;
  const cli = (args: string[]) => runCli(args, { server: server.addr });
  const json = <T>(args: string[]) => cliJson<T>(args, { server: server.addr });

  beforeAll(async () => {
    server = await startServer(await backend.serverOptions());
    src = path.join(tmpDir(), 'data');
    await makeRoundTripTree(src);
  });
  afterAll(async () => {
    await server?.stop();
    await backend.cleanup?.();
  });

  it('restores every byte, mode, mtime, symlink and empty dir of the tree it saved', async () => {
    const snap = await json<SnapshotOut>(['snapshot', src, '--dataset', 'exp', '--host', 'node1']);
    expect(snap.stats.errors).toBe(0);
    expect(snap.stats.files).toBe(13);
    const target = path.join(tmpDir(), 'restored');
    const r = await cli(['restore', '--snapshot', 'latest', '--dataset', 'exp', target]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(await describeTree(target)).toEqual(await describeTree(src));
  });

  it('a second snapshot of the unchanged tree reads no file and stores under 1 KiB', async () => {
    const snap = await json<SnapshotOut>(['snapshot', src, '--dataset', 'exp', '--host', 'node1']);
    expect(snap.stats.bytesRead).toBe(0);
    expect(snap.stats.filesReused).toBe(13);
    expect(Number(snap.snapshot.summary.newBytes)).toBeLessThan(1024);
    const hist = await cli(['history', '--dataset', 'exp']);
    expect(hist.stdout.split('\n').filter((l) => l.includes(' exp ')).length).toBe(2);
  });

  it('inserting one byte at the start of a 64 MiB file stores at most 3 new chunks', async () => {
    const dir = path.join(tmpDir(), 'shift');
    const body = randomBytes(64 * MiB, 77);
    await writeFile(path.join(dir, 'data.bin'), body);
    await json<SnapshotOut>(['snapshot', dir, '--dataset', 'shift', '--host', 'node1']);
    await writeFile(path.join(dir, 'data.bin'), Buffer.concat([Buffer.from([0x42]), body]));
    const second = await json<SnapshotOut>(['snapshot', dir, '--dataset', 'shift', '--host', 'node1']);
    // New data chunks plus the one root tree blob.
    expect(Number(second.snapshot.summary.newChunks) - 1).toBeLessThanOrEqual(3);
    expect(Number(second.snapshot.summary.newBytes)).toBeLessThan(3 * 4 * MiB + 4096);
    const target = path.join(tmpDir(), 'shift-restored');
    expect((await cli(['restore', '--snapshot', second.snapshot.id, target])).code).toBe(0);
    expect((await fs.readFile(path.join(target, 'data.bin'))).equals(Buffer.concat([Buffer.from([0x42]), body]))).toBe(true);
  });
});

describe('client behaviour', () => {
  let server: ServerHandle;
  beforeAll(async () => {
    server = await startServer();
  });
  afterAll(async () => {
    await server?.stop();
    cleanupTmp();
  });

  it('reports unreadable files, completes the snapshot and exits 3', async () => {
    const dir = path.join(tmpDir(), 'partial');
    await writeFile(path.join(dir, 'ok.txt'), 'fine');
    await writeFile(path.join(dir, 'locked/secret.txt'), 'secret');
    await writeFile(path.join(dir, 'unreadable.bin'), 'no');
    // Root reads through permission bits, so the CLI runs as an unprivileged user when we are root.
    const asUser = process.getuid?.() === 0 ? 65534 : undefined;
    await fs.chmod(path.dirname(dir), 0o755);
    await fs.chmod(dir, 0o755);
    await fs.chmod(path.join(dir, 'ok.txt'), 0o644);
    await fs.chmod(path.join(dir, 'locked'), 0o000);
    await fs.chmod(path.join(dir, 'unreadable.bin'), 0o000);
    const r = await runCli(['--json', 'snapshot', dir, '--dataset', 'partial', '--host', 'h'], { server: server.addr, uid: asUser });
    await fs.chmod(path.join(dir, 'locked'), 0o755);
    expect(r.code).toBe(3);
    const out = JSON.parse(r.stdout) as SnapshotOut;
    expect(out.problems.map((p) => path.basename(p.path)).sort()).toEqual(['locked', 'unreadable.bin']);
    expect(out.problems.every((p) => p.message.startsWith('EACCES'))).toBe(true);
    expect(out.stats.errors).toBe(2);
    expect(out.stats.files).toBe(1);
    expect(r.stderr).toContain('warning:');
    // Status shows the gap in the newest snapshot, not only the run's own output.
    const status = await runCli(['--json', 'status', '--dataset', 'partial'], { server: server.addr });
    expect(JSON.parse(status.stdout)).toMatchObject({ dataset: 'partial', state: 'ok', unreadable: 2 });
    expect((await runCli(['status', '--dataset', 'partial'], { server: server.addr })).stdout).toContain('last snapshot left out or could not read whole 2 entries');
  });

  it('leaves out names and link targets that are not valid UTF-8, reporting each, and keeps everything else', async () => {
    const dir = path.join(tmpDir(), 'bytes');
    await writeFile(path.join(dir, 'ok.txt'), 'fine');
    // 'x\uFFFD' is a valid name (U+FFFD itself); 'x' + 0xff is not, and reads back as the same string.
    await writeFile(path.join(dir, 'x\uFFFD'), 'the valid twin');
    const raw = (...bytes: number[]) => Buffer.concat([Buffer.from(`${dir}/`), Buffer.from(bytes)]);
    await fs.writeFile(raw(0x78, 0xff), 'latin-1 name');
    await fs.mkdir(raw(0x64, 0xe9));
    await fs.writeFile(Buffer.concat([raw(0x64, 0xe9), Buffer.from('/inside.txt')]), 'under a latin-1 directory');
    await fs.symlink(Buffer.from([0x63, 0x61, 0x66, 0xe9]), path.join(dir, 'link'));
    await fs.symlink('ok.txt', path.join(dir, 'good-link'));
    const r = await runCli(['--json', 'snapshot', dir, '--dataset', 'bytes', '--host', 'h'], { server: server.addr });
    expect(r.code, r.stderr).toBe(3);
    const out = JSON.parse(r.stdout) as SnapshotOut;
    expect(out.problems.map((p) => [path.basename(p.path), p.message]).sort()).toEqual([
      ['d\uFFFD', 'EILSEQ: name is not valid UTF-8: left out (cairn stores names as UTF-8; rename it to back it up)'],
      ['link', 'EILSEQ: link target is not valid UTF-8: left out (cairn stores names as UTF-8; rename it to back it up)'],
      ['x\uFFFD', 'EILSEQ: name is not valid UTF-8: left out (cairn stores names as UTF-8; rename it to back it up)'],
    ]);
    const target = path.join(tmpDir(), 'bytes-out');
    expect((await runCli(['restore', '--dataset', 'bytes', target], { server: server.addr })).code).toBe(0);
    expect((await fs.readdir(target)).sort()).toEqual(['good-link', 'ok.txt', 'x\uFFFD']);
    expect(await fs.readFile(path.join(target, 'x\uFFFD'), 'utf8')).toBe('the valid twin');
    expect(await fs.readlink(path.join(target, 'good-link'))).toBe('ok.txt');
  });

  it('a file rewritten all the while it is read is read twice and then reported, exit 3', async () => {
    const dir = path.join(tmpDir(), 'busy');
    await writeFile(path.join(dir, 'steady.bin'), randomBytes(2 * 1024 * 1024, 5));
    const file = path.join(dir, 'checkpoint.bin');
    await writeFile(file, randomBytes(32 * 1024 * 1024, 6));
    // Rewrites the file in place, 1 MiB at a time, until killed: every read of it sees a change.
    const writer = spawn(process.execPath, ['-e', `const fs = require('fs'); const fd = fs.openSync(process.argv[1], 'r+'); const b = Buffer.alloc(1 << 20); process.stdout.write('go\\n'); for (let v = 0; ; v++) { b.fill(v & 0xff); for (let off = 0; off < 32 << 20; off += 1 << 20) fs.writeSync(fd, b, 0, b.length, off); }`, file], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise((resolve) => writer.stdout.once('data', resolve));
      const r = await runCli(['--json', 'snapshot', dir, '--dataset', 'busy', '--host', 'h'], { server: server.addr });
      expect(r.code, r.stderr).toBe(3);
      const out = JSON.parse(r.stdout) as SnapshotOut;
      expect(out.problems).toEqual([{ path: file, message: 'ECHANGED: changed while it was read, twice: the snapshot holds the second read, which may mix old and new contents' }]);
      expect(out.stats.files).toBe(2);
    } finally {
      writer.kill('SIGKILL');
    }
  });

  it('refuses a missing directory with NOT_FOUND and records nothing', async () => {
    const r = await runCli(['snapshot', path.join(tmpDir(), 'not-mounted'), '--dataset', 'gone', '--host', 'h'], { server: server.addr });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/NOT_FOUND: .*not-mounted does not exist/);
    const hist = await runCli(['--json', 'history', '--dataset', 'gone'], { server: server.addr });
    expect(hist.stdout.trim()).toBe('');
  });

  it('refuses more channels than the server admits Upload streams for, before connecting', async () => {
    const r = await runCli(['--channels', '17', 'snapshot', tmpDir(), '--dataset', 'wide', '--host', 'h'], { server: server.addr });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('INVALID_ARGUMENT: --channels must be a whole number from 1 to 16, got "17"');
  });

  it('rejects a bad dataset name with INVALID_ARGUMENT naming it', async () => {
    const dir = path.join(tmpDir(), 'x');
    await writeFile(path.join(dir, 'a'), 'a');
    const r = await runCli(['snapshot', dir, '--dataset', '../etc', '--host', 'h'], { server: server.addr });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('INVALID_ARGUMENT: dataset "../etc" is not valid');
    // The folder store's temporaries are <name>.tmp-<hex>: a dataset named like one would hide its policy.
    const tmpLike = await runCli(['snapshot', dir, '--dataset', 'exp.tmp-0123456789ab', '--host', 'h'], { server: server.addr });
    expect(tmpLike.code).toBe(1);
    expect(tmpLike.stderr).toContain(`INVALID_ARGUMENT: dataset "exp.tmp-0123456789ab" is not valid: '.tmp-' is reserved`);
  });

  it('restore never overwrites a local file that differs unless told, and resumes by skipping identical files', async () => {
    const dir = path.join(tmpDir(), 'ow');
    await writeFile(path.join(dir, 'a.txt'), 'from snapshot');
    await writeFile(path.join(dir, 'b.txt'), 'b stays the same');
    await runCli(['snapshot', dir, '--dataset', 'ow', '--host', 'h'], { server: server.addr });
    const target = path.join(tmpDir(), 'ow-target');
    await writeFile(path.join(target, 'a.txt'), 'newer local edit');
    await writeFile(path.join(target, 'b.txt'), 'b stays the same');
    const r1 = await runCli(['--json', 'restore', '--dataset', 'ow', target], { server: server.addr });
    expect(r1.code).toBe(3);
    const out1 = JSON.parse(r1.stdout) as { stats: { filesSkippedSame: number; filesKeptLocal: number } };
    expect(out1.stats.filesSkippedSame).toBe(1);
    expect(out1.stats.filesKeptLocal).toBe(1);
    expect(await fs.readFile(path.join(target, 'a.txt'), 'utf8')).toBe('newer local edit');
    const r2 = await runCli(['restore', '--dataset', 'ow', '--overwrite', 'always', target], { server: server.addr });
    expect(r2.code).toBe(0);
    expect(await fs.readFile(path.join(target, 'a.txt'), 'utf8')).toBe('from snapshot');
  });
});

import * as grpc from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { escapingSymlink } from '../client/restorer.js';
import { DEFAULT_CHUNKER_PARAMS } from '../common/chunker.js';
import { hash, toHex } from '../common/hash.js';
import { emptySummary, type Node } from '../common/messages.js';
import { cairnServiceDefinition } from '../common/proto.js';
import { cleanupTmp, runCli, tmpDir, type CliResult } from './harness.js';

/**
 * A compromised server serves whatever it likes: trees with names that climb out, duplicate
 * names that turn a directory into a link, links to anywhere. This one serves crafted trees
 * straight from memory (no encodeTree, so no validation), and `cairn restore` runs against it.
 */
class HostileServer {
  readonly trees = new Map<string, Node[]>();
  readonly chunks = new Map<string, { data: Buffer; rawLength?: number; compression?: string }>();
  root = Buffer.alloc(32);
  private readonly server = new grpc.Server();
  addr = '';

  async start(): Promise<void> {
    const snapshot = () => ({ id: 'e'.repeat(64), dataset: 'evil', host: 'mallory', paths: ['/'], tags: [], time: new Date().toISOString(), parent: '', rootTree: toHex(this.root), summary: emptySummary(), clientVersion: 'x', protected: false });
    this.server.addService(cairnServiceDefinition, {
      Hello: (_c: unknown, cb: grpc.sendUnaryData<unknown>) => cb(null, { serverVersion: 'evil', repositoryId: 'r', chunker: DEFAULT_CHUNKER_PARAMS, maxMessageBytes: 64 << 20, maxBlobRawBytes: 4 << 20, compressionLevel: 3, repository: 'default' }),
      GetSnapshot: (_c: unknown, cb: grpc.sendUnaryData<unknown>) => cb(null, snapshot()),
      ReadTree: (call: grpc.ServerWritableStream<{ id: Buffer }, unknown>) => {
        call.write({ nodes: this.trees.get(toHex(call.request.id)) ?? [] });
        call.end();
      },
      ReadChunks: (call: grpc.ServerWritableStream<{ ids: Buffer[] }, unknown>) => {
        for (const id of call.request.ids) {
          const c = this.chunks.get(toHex(id));
          if (c) call.write({ id, kind: 'DATA', compression: c.compression ?? 'NONE', rawLength: c.rawLength ?? c.data.length, data: c.data });
        }
        call.end();
      },
    });
    const port = await new Promise<number>((resolve, reject) => this.server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
    this.addr = `127.0.0.1:${port}`;
  }

  stop(): void {
    this.server.forceShutdown();
  }

  /** Serves `nodes` as the snapshot's root. */
  serve(nodes: Node[]): void {
    this.root = this.tree(nodes);
  }

  tree(nodes: Node[]): Buffer {
    const id = randomBytes(32);
    this.trees.set(toHex(id), nodes);
    return id;
  }
}

function node(name: string, type: Node['type'], extra: Partial<Node> = {}): Node {
  return { name, type, mode: type === 'DIR' ? 0o755 : 0o644, mtimeNs: '1700000000000000000', size: '0', chunks: [], subtree: Buffer.alloc(0), target: '', inode: '0', ctimeNs: '0', ...extra };
}

interface Listing {
  [rel: string]: string;
}

/** Every entry under `dir` (not following links), with file contents and link targets. */
async function list(dir: string, skip?: string): Promise<Listing> {
  const out: Listing = {};
  async function walk(d: string): Promise<void> {
    for (const e of await fs.readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (p === skip) continue;
      const rel = path.relative(dir, p);
      if (e.isSymbolicLink()) out[rel] = `-> ${await fs.readlink(p)}`;
      else if (e.isDirectory()) {
        out[rel] = 'dir';
        await walk(p);
      } else out[rel] = `file ${await fs.readFile(p, 'utf8')}`;
    }
  }
  await walk(dir);
  return out;
}

/** Where each symlink under `target` really leads (following chains), for those that resolve. */
async function linkDestinations(target: string): Promise<string[]> {
  const out: string[] = [];
  for (const [rel, what] of Object.entries(await list(target))) {
    if (!what.startsWith('-> ')) continue;
    const abs = path.join(target, rel);
    out.push(await fs.realpath(abs).catch(() => path.resolve(path.dirname(abs), what.slice(3))));
  }
  return out;
}

describe('restore from a hostile server writes nothing outside the target', () => {
  const evil = new HostileServer();
  let base: string;
  let target: string;
  let canary: string;

  const file = (name: string, content: string, extra: Partial<Node> = {}) => {
    const data = Buffer.from(content);
    evil.chunks.set(toHex(hash(data)), { data });
    return node(name, 'FILE', { size: String(data.length), chunks: [hash(data)], ...extra });
  };
  const dir = (name: string, nodes: Node[]) => node(name, 'DIR', { subtree: evil.tree(nodes) });
  const link = (name: string, to: string) => node(name, 'SYMLINK', { target: to });

  beforeAll(async () => {
    await evil.start();
  });
  afterAll(() => {
    evil.stop();
    cleanupTmp();
  });

  /** A fresh base with a canary sibling of the target, the restore, and proof the outside did not change. */
  async function restore(root: Node[] | (() => Node[]), args: string[] = [], plant?: (target: string) => Promise<void>): Promise<CliResult> {
    base = tmpDir('cairn-hostile-');
    target = path.join(base, 'target');
    canary = path.join(base, 'canary');
    await fs.mkdir(canary);
    await fs.writeFile(path.join(canary, 'keep'), 'canary');
    await fs.mkdir(target);
    await plant?.(target);
    const outsideBefore = await list(base, target);
    evil.serve(typeof root === 'function' ? root() : root);
    const r = await runCli(['restore', '--snapshot', 'latest', ...args, target], { server: evil.addr });
    expect(await list(base, target)).toEqual(outsideBefore);
    return r;
  }

  it.each([
    ['..', 'name ".." is a relative path component'],
    ['.', 'name "." is a relative path component'],
    ['', 'empty name'],
    ['../escape', `name "../escape" contains '/'`],
    ['a/../../escape', `name "a/../../escape" contains '/'`],
    ['/tmp/escape', `name "/tmp/escape" contains '/'`],
    ['nul\0byte', 'name "nul\\u0000byte" contains NUL'],
  ])('refuses an entry named %j before writing anything', async (name, why) => {
    const r = await restore([file('a-first', 'ok'), file(name, 'pwned')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`cairn: DATA_LOSS: refusing to restore directory / (tree ${toHex(evil.root)}): ${why}`);
    expect(await list(target)).toEqual({});
  });

  it('ls -R stops at a tree that contains itself instead of walking forever', async () => {
    const loop = hash(Buffer.from('a tree id the server serves as its own child'));
    evil.trees.set(toHex(loop), [node('again', 'DIR', { subtree: loop })]);
    evil.serve([node('loop', 'DIR', { subtree: loop })]);
    const r = await runCli(['ls', 'latest', '--recursive'], { server: evil.addr });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/DATA_LOSS: directory \/loop\/again \(tree [0-9a-f]{64}\) contains itself/);
  });

  it('refuses a bad name deep in the tree too', async () => {
    const r = await restore([dir('sub', [dir('deeper', [file('../../../escape', 'pwned')])])]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/DATA_LOSS: refusing to restore directory \/sub\/deeper \(tree [0-9a-f]{64}\): name "\.\.\/\.\.\/\.\.\/escape" contains '\/'/);
  });

  it.each([
    ['directory then link', (d: Node, l: Node) => [d, l]],
    ['link then directory', (d: Node, l: Node) => [l, d]],
  ])('refuses duplicate names that would turn a directory into a link (%s)', async (_, order) => {
    const r = await restore(() => order(dir('d', [file('evil', 'pwned')]), link('d', canary)));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/DATA_LOSS: refusing to restore directory \/ \(tree [0-9a-f]{64}\): entries not sorted or duplicated at "d"/);
    expect(await fs.readdir(canary)).toEqual(['keep']);
  });

  it('creates links verbatim but last, so no write follows one, and --confine-symlinks keeps every link inside', async () => {
    const tree = () => [
      dir('a', [link('p', '..'), file('x', 'in a')]),
      link('abs', canary),
      link('inside', 'a/x'),
      link('q', 'a/p/../canary/keep'),
      link('up', '../canary'),
      file('z', 'plain'),
    ];
    const verbatim = await restore(tree);
    expect(verbatim.stderr).toBe('');
    expect(verbatim.code).toBe(0);
    expect(await fs.readlink(path.join(target, 'abs'))).toBe(canary);
    expect(await fs.readFile(path.join(target, 'inside'), 'utf8')).toBe('in a');

    const confined = await restore(tree, ['--confine-symlinks']);
    expect(confined.code).toBe(3);
    expect(confined.stderr).toContain(`refused: ${target}/abs: symlink not restored: its target ${JSON.stringify(canary)} is absolute`);
    expect(confined.stderr).toContain(`refused: ${target}/up: symlink not restored: its target "../canary" climbs above the restore target`);
    expect(confined.stderr).toContain(`refused: ${target}/q: symlink not restored: its target "a/p/../canary/keep" climbs with '..' after a name`);
    expect(Object.keys(await list(target)).sort()).toEqual(['a', 'a/p', 'a/x', 'inside', 'z']);
    for (const dest of await linkDestinations(target)) expect(dest === target || dest.startsWith(target + path.sep), dest).toBe(true);
  });

  it('never creates directories through a link already in the target, even for one included file deep below it', async () => {
    const plant = (t: string) => fs.symlink(canary, path.join(t, 'planted'));
    const snapshot = () => [dir('planted', [dir('deep', [file('evil', 'pwned')])])];
    const whole = await restore(snapshot(), [], plant);
    expect(whole.code).toBe(3);
    expect(whole.stderr).toContain(`kept local: ${target}/planted: a file or link stands where the snapshot has a directory; kept, and nothing restored below it`);
    expect(await fs.readlink(path.join(target, 'planted'))).toBe(canary);
    // --overwrite always removes the link itself and makes the directory in its place.
    const replaced = await restore(snapshot(), ['--overwrite', 'always'], plant);
    expect(replaced.code, replaced.stderr).toBe(0);
    expect(await fs.readFile(path.join(target, 'planted/deep/evil'), 'utf8')).toBe('pwned');
    // With --include the link is an ancestor nobody chose: checked before anything below it, under every mode.
    for (const mode of ['never', 'always']) {
      const one = await restore(snapshot(), ['--include', 'planted/deep/evil', '--overwrite', mode], plant);
      expect(one.code, one.stderr).toBe(3);
      expect(one.stderr).toContain(`kept local: ${target}/planted: a file or link stands where the snapshot has a directory; kept, and nothing restored below it`);
      expect(await fs.readlink(path.join(target, 'planted'))).toBe(canary);
    }
    expect(await fs.readdir(canary)).toEqual(['keep']);
  });

  it('with --include, never removes or reads through a link above the included path, to a file outside the target', async () => {
    // Beside the target, in the base the helper lists before and after: any change fails the test.
    const plant = async (t: string) => {
      const outside = path.join(path.dirname(t), 'outside-b');
      await fs.mkdir(outside);
      await fs.writeFile(path.join(outside, 'b'), 'a file of the user outside the target');
      await fs.symlink(outside, path.join(t, 'a'));
    };
    const snapshot = () => [dir('a', [dir('b', [file('f', 'restored')])])];
    for (const mode of ['never', 'always']) {
      const r = await restore(snapshot(), ['--include', 'a/b', '--overwrite', mode], plant);
      expect(r.code, r.stderr).toBe(3);
      expect(r.stderr).toContain(`kept local: ${target}/a: a file or link stands where the snapshot has a directory`);
    }
  });

  it('--overwrite always: the dry run plans what the real run does below a link it replaces, and neither touches what the link points to', async () => {
    const plant = async (t: string) => {
      const outside = path.join(path.dirname(t), 'outside-d');
      await fs.mkdir(path.join(outside, 'sub'), { recursive: true });
      await fs.writeFile(path.join(outside, 'sub/g'), 'g');
      await fs.mkdir(path.join(outside, 'lnk/full'), { recursive: true });
      await fs.symlink(outside, path.join(t, 'd'));
    };
    const snapshot = () => [dir('d', [link('lnk', 'sub/g'), dir('sub', [file('g', 'g')])])];
    const dry = await restore(snapshot(), ['--overwrite', 'always', '--dry-run', '--json'], plant);
    expect(dry.code, dry.stderr).toBe(0);
    const planned = JSON.parse(dry.stdout) as { plan: { filesToWrite: number; filesIdentical: number }; conflicts: unknown[] };
    expect(planned.conflicts).toEqual([]);
    expect(planned.plan).toMatchObject({ filesToWrite: 1, filesIdentical: 0 });
    const real = await restore(snapshot(), ['--overwrite', 'always'], plant);
    expect(real.code, real.stderr).toBe(0);
    expect(await fs.readlink(path.join(target, 'd/lnk'))).toBe('sub/g');
    expect(await fs.readFile(path.join(target, 'd/sub/g'), 'utf8')).toBe('g');
  });

  it('replaces a link standing where a file goes without writing through it', async () => {
    const plant = (t: string) => fs.symlink(path.join(canary, 'keep'), path.join(t, 'f'));
    const kept = await restore([file('f', 'restored')], [], plant);
    expect(kept.code).toBe(3);
    expect(kept.stderr).toContain(`kept local: ${target}/f`);
    const replaced = await restore([file('f', 'restored')], ['--overwrite', 'always'], plant);
    expect(replaced.code).toBe(0);
    expect((await fs.lstat(path.join(target, 'f'))).isFile()).toBe(true);
    expect(await fs.readFile(path.join(target, 'f'), 'utf8')).toBe('restored');
  });

  it('drops setuid and setgid bits', async () => {
    const r = await restore([{ ...dir('shared', []), mode: 0o3777 }, file('tool', '#!/bin/sh\n', { mode: 0o6755 })]);
    expect(r.stderr).toBe('');
    expect((await fs.stat(path.join(target, 'tool'))).mode & 0o7777).toBe(0o755);
    expect((await fs.stat(path.join(target, 'shared'))).mode & 0o7777).toBe(0o1777);
  });

  it('refuses a chunk that claims a raw length no chunk can have, before allocating it', async () => {
    const f = file('big', 'tiny');
    evil.chunks.set(toHex(f.chunks[0]), { data: Buffer.from('tiny'), rawLength: 0xffffffff, compression: 'ZSTD' });
    const r = await restore([f]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/DATA_LOSS: file .*big: chunk [0-9a-f]{64} claims 4294967295 raw bytes, more than any chunk may hold/);
  });

  it('classifies link targets by where they can lead', () => {
    expect(escapingSymlink('x/y', 0)).toBeUndefined();
    expect(escapingSymlink('../x', 1)).toBeUndefined();
    expect(escapingSymlink('./.././x/./y', 1)).toBeUndefined();
    expect(escapingSymlink('../../x', 1)).toMatch(/climbs above the restore target/);
    expect(escapingSymlink('x/../y', 3)).toMatch(/climbs with '\.\.' after a name/);
    expect(escapingSymlink('/etc', 5)).toMatch(/is absolute/);
  });
});

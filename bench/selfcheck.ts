/**
 * Checks the bench's own ground truth before any number is trusted (a second or two):
 * the generator is deterministic, the day of changes is, the excluded noise never reaches a
 * manifest, and verifyTree catches a flipped byte, a truncated, missing or extra file.
 * `node dist/bench/selfcheck.js`; run.ts runs it first unless --no-self-check.
 */
import { appendFile, cp, mkdtemp, open, rm, unlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { applyDayOfChanges, buildManifest, EXCLUDED_DIRS, generateDataset, verifyTree, type Manifest } from './dataset.js';

function assert(cond: unknown, msg: string): asserts cond {
  if (!cond) throw new Error(`bench self-check failed: ${msg}`);
}

function sameManifest(a: Manifest, b: Manifest): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) {
    const w = b.get(k);
    if (!w || w.size !== v.size || w.hash !== v.hash) return false;
  }
  return true;
}

async function expectFailure(expected: Manifest, dir: string, what: string, needle: string): Promise<void> {
  try {
    await verifyTree(expected, dir, what);
  } catch (err) {
    assert((err as Error).message.includes(needle), `${what}: error does not mention "${needle}": ${(err as Error).message}`);
    return;
  }
  throw new Error(`bench self-check failed: verifyTree accepted ${what}`);
}

export async function selfCheck(): Promise<void> {
  const base = await mkdtemp(path.join(os.tmpdir(), 'cairn-bench-selfcheck-'));
  try {
    const opts = { mib: 12, small: 300, seed: 7 };
    const a = path.join(base, 'a');
    const b = path.join(base, 'b');
    await generateDataset(a, opts);
    await generateDataset(b, opts);
    const ma = await buildManifest(a);
    const mb = await buildManifest(b);
    assert(sameManifest(ma, mb), 'two generations with the same seed differ');
    for (const rel of ma.keys()) assert(!rel.split('/').some((p) => EXCLUDED_DIRS.includes(p)), `excluded path in manifest: ${rel}`);
    const other = await buildManifest(await (async () => {
      const c = path.join(base, 'c');
      await generateDataset(c, { ...opts, seed: 8 });
      return c;
    })());
    assert(!sameManifest(ma, other), 'a different seed gave the same data');

    await applyDayOfChanges(a, opts);
    await applyDayOfChanges(b, opts);
    const ca = await buildManifest(a);
    assert(sameManifest(ca, await buildManifest(b)), 'the day of changes is not deterministic');
    let changed = 0;
    for (const [k, v] of ca) if (ma.get(k)?.hash !== v.hash) changed++;
    assert(changed >= 15 + 3 + 1, `the day of changes touched only ${changed} files`);
    assert([...ma.keys()].some((k) => !ca.has(k)), 'the day of changes deleted nothing');

    // The verifier must catch every kind of wrong restore.
    await verifyTree(ca, b, 'identical copy');
    const victim = [...ca.entries()].find(([, v]) => v.size > 1000)![0];
    const fh = await open(path.join(b, victim), 'r+');
    const byte = Buffer.alloc(1);
    await fh.read(byte, 0, 1, 500);
    byte[0] ^= 1;
    await fh.write(byte, 0, 1, 500);
    await fh.close();
    await expectFailure(ca, b, 'a flipped byte', `content differs: ${victim}`);
    await rm(b, { recursive: true });
    await cp(a, b, { recursive: true });
    await appendFile(path.join(b, victim), 'x');
    await expectFailure(ca, b, 'a longer file', `size differs: ${victim}`);
    await cp(path.join(a, victim), path.join(b, victim));
    await unlink(path.join(b, victim));
    await expectFailure(ca, b, 'a missing file', `missing: ${victim}`);
    await cp(path.join(a, victim), path.join(b, victim));
    await writeFile(path.join(b, 'stray.txt'), 'not in the snapshot');
    await expectFailure(ca, b, 'an extra file', 'unexpected: stray.txt');
  } finally {
    await rm(base, { recursive: true, force: true });
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const t0 = Date.now();
  await selfCheck();
  console.log(`bench self-check passed in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

describe('CompressPool', () => {
  it('keeps the process alive while a job is in flight, and lets it exit once idle', () => {
    // Nothing but the worker's answer is pending here: with an unreferenced worker, Node
    // would find the event loop empty and exit 0 before the chunk came back.
    const script = `
      const { CompressPool } = await import(${JSON.stringify(path.join(ROOT, 'dist/client/compress-pool.js'))});
      const pool = new CompressPool(3, 1);
      const raw = Buffer.alloc(1 << 20, 7);
      const packed = await pool.compress(raw);
      console.log('compressed', packed.compressed, packed.data.length < (1 << 20));
    `;
    const dir = mkdtempSync(path.join(os.tmpdir(), 'cairn-pool-'));
    writeFileSync(path.join(dir, 'compress-once.mjs'), script);
    const r = spawnSync(process.execPath, [path.join(dir, 'compress-once.mjs')], { encoding: 'utf8', timeout: 30_000 });
    rmSync(dir, { recursive: true, force: true });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('compressed true true');
    // The pool was never closed: an idle worker must not hold the process open.
    expect(r.status).toBe(0);
    expect(r.signal).toBeNull();
  });
});

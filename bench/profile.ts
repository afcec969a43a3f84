/**
 * Summarises V8 .cpuprofile files (from `node --cpu-prof`): self time per function, and the
 * share of total samples. `node dist/bench/profile.js FILE.cpuprofile...` prints the top 25.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface SelfTime {
  fn: string;
  where: string;
  ms: number;
  share: number;
}

function shortUrl(url: string): string {
  if (!url) return '';
  const u = url.replace(/^file:\/\//, '');
  const nm = u.lastIndexOf('node_modules/');
  if (nm >= 0) return u.slice(nm + 'node_modules/'.length);
  const d = u.indexOf('/dist/');
  if (d >= 0) return u.slice(d + 1);
  return u;
}

export async function summarise(file: string, top = 25): Promise<{ totalMs: number; idleMs: number; gcMs: number; rows: SelfTime[]; categories: Record<string, number> }> {
  const p = JSON.parse(await readFile(file, 'utf8')) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++) {
    const dt = (p.timeDeltas[i + 1] ?? 0) / 1000;
    self.set(p.samples[i], (self.get(p.samples[i]) ?? 0) + dt);
  }
  const agg = new Map<string, SelfTime>();
  let total = 0;
  let idle = 0;
  let gc = 0;
  for (const [id, ms] of self) {
    const n = byId.get(id)!;
    const fn = n.callFrame.functionName || '(anonymous)';
    total += ms;
    if (fn === '(idle)') idle += ms;
    if (fn === '(garbage collector)') gc += ms;
    const where = n.callFrame.url ? `${shortUrl(n.callFrame.url)}:${n.callFrame.lineNumber + 1}` : '';
    const key = `${fn}@${where}`;
    const row = agg.get(key) ?? { fn, where, ms: 0, share: 0 };
    row.ms += ms;
    agg.set(key, row);
  }
  const all = [...agg.values()];
  const categories: Record<string, number> = {};
  for (const r of all) categories[category(r)] = (categories[category(r)] ?? 0) + r.ms;
  const rows = all.sort((a, b) => b.ms - a.ms).slice(0, top);
  for (const r of rows) r.share = total > 0 ? r.ms / total : 0;
  return { totalMs: total, idleMs: idle, gcMs: gc, rows, categories };
}

const FS_NATIVE = new Set(['read', 'write', 'writeBuffer', 'writeBuffers', 'openFileHandle', 'open', 'close', 'lstat', 'stat', 'fstat', 'rename', 'utimes', 'futimes', 'chmod', 'fchmod', 'readdir', 'mkdir', 'unlink', 'rmdir', 'readlink', 'ftruncate', 'fsync', 'realpath']);

/** A coarse bucket for a function: where the time goes, in words a reader can act on. */
function category(r: SelfTime): string {
  const w = r.where;
  if (r.fn === '(idle)') return 'idle (waiting)';
  if (r.fn === '(garbage collector)') return 'garbage collection';
  if (r.fn === '(program)') return 'V8/native other';
  if (!w && FS_NATIVE.has(r.fn)) return 'file system calls';
  if (w.startsWith('node:internal/fs')) return 'file system (JS side)';
  if (w.includes('classic-level') || w.includes('abstract-level') || r.fn.startsWith('_getMany') || r.fn === '_batch') return 'LevelDB';
  if (w.includes('@grpc') || w.includes('http2') || w.startsWith('node:internal/stream') || w.startsWith('node:net')) return 'gRPC / HTTP2';
  if (w.includes('protobufjs') || w.includes('long/') || r.fn.endsWith('$decode') || r.fn.endsWith('$encode')) return 'protobuf';
  if (w.includes('compression.js') || w.includes('zstd')) return 'zstd';
  if (w.includes('hash.js') || w.includes('blake')) return 'BLAKE3';
  if (w.includes('chunker.js')) return 'chunker (FastCDC)';
  if (r.fn === 'postMessage' || w.includes('worker')) return 'worker messaging';
  if (w.startsWith('node:buffer') || w.startsWith('node:internal/buffer') || r.fn === 'copy' || r.fn === 'concat') return 'buffer copies';
  if (w.includes('dist/')) return 'cairn code';
  if (w.startsWith('node:')) return 'node internals';
  return 'other';
}

export function formatSummary(name: string, s: Awaited<ReturnType<typeof summarise>>): string {
  const lines = [`${name}: ${(s.totalMs / 1000).toFixed(2)} s sampled, idle ${((100 * s.idleMs) / Math.max(1, s.totalMs)).toFixed(0)}%, GC ${((100 * s.gcMs) / Math.max(1, s.totalMs)).toFixed(0)}%`];
  const cats = Object.entries(s.categories).sort((a, b) => b[1] - a[1]);
  lines.push('  by category: ' + cats.map(([k, v]) => `${k} ${((100 * v) / Math.max(1, s.totalMs)).toFixed(0)}%`).join(', '));
  lines.push('  self ms   share  function (where)');
  for (const r of s.rows) lines.push(`  ${r.ms.toFixed(0).padStart(7)}  ${(100 * r.share).toFixed(1).padStart(5)}%  ${r.fn}${r.where ? ` (${r.where})` : ''}`);
  return lines.join('\n');
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  for (const f of process.argv.slice(2)) console.log(formatSummary(path.basename(f), await summarise(f)));
}

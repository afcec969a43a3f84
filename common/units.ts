import { invalidArgument } from './errors.js';

const BINARY = { k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };
const DECIMAL = { k: 1e3, m: 1e6, g: 1e9, t: 1e12 };

/**
 * Bytes from a size such as "1234", "300k", "1.5G", "10GiB", "500MB". Case does not matter.
 * As in rsync, a bare letter (K, M, G, T) and the IEC forms (KiB…TiB) are powers of 1024, while
 * KB…TB are powers of 1000; "B" alone means bytes. Fractions round to the nearest byte.
 */
export function parseSize(s: string): number {
  const bad = (why: string) => invalidArgument(`invalid size "${s}": ${why}`);
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(s.trim());
  if (!m) throw bad('expected a number and an optional unit, such as 500MB, 10GiB or 1.5G');
  const unit = m[2]!.toLowerCase();
  let multiplier: number | undefined;
  if (unit === '' || unit === 'b') multiplier = 1;
  else {
    const letter = unit[0] as keyof typeof BINARY;
    const rest = unit.slice(1);
    if (Object.hasOwn(BINARY, letter)) {
      if (rest === '' || rest === 'ib') multiplier = BINARY[letter];
      else if (rest === 'b') multiplier = DECIMAL[letter];
    }
  }
  if (multiplier === undefined) throw bad(`unknown unit "${m[2]}" (use B, K, KB, KiB, M, MB, MiB, G, GB, GiB, T, TB or TiB)`);
  const bytes = Math.round(Number(m[1]) * multiplier);
  if (!Number.isSafeInteger(bytes)) throw bad('too large');
  return bytes;
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** Human size with binary units, as tables show it: 1.5 GiB, 312 KiB, 0 B. */
export function formatBytes(n: number): string {
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)} ${UNITS[u]}`;
}

import type { Command } from 'commander';
import type { Snapshot } from '../common/messages.js';
import { formatBytes } from '../common/units.js';
import { invalidArgument } from '../common/errors.js';
import { Connection, MAX_CHANNELS, tlsFromFlags, type TlsFlags } from './connection.js';
import { localTime, relativeTime } from './format.js';

export const EXIT = { OK: 0, ERROR: 1, USAGE: 2, PARTIAL: 3 } as const;

export interface GlobalOpts extends TlsFlags {
  server: string;
  token?: string;
  json: boolean;
  channels: string;
}

export function connect(cmd: Command): { conn: Connection; g: GlobalOpts } {
  const g = cmd.optsWithGlobals<GlobalOpts>();
  const channels = Number(g.channels);
  if (!Number.isSafeInteger(channels) || channels < 1 || channels > MAX_CHANNELS) {
    throw invalidArgument(`--channels must be a whole number from 1 to ${MAX_CHANNELS}, got ${JSON.stringify(g.channels)}`);
  }
  return { conn: new Connection({ server: g.server, token: g.token, tls: tlsFromFlags(g), channels }), g };
}

/** A count option's value (`flag` as the user typed it, for the message). */
export function count(text: string, flag: string): number {
  const n = Number(text);
  if (text.trim() === '' || !Number.isSafeInteger(n) || n < 0) throw invalidArgument(`${flag} must be a whole number of zero or more, got ${JSON.stringify(text)}`);
  return n;
}

export function out(line: string): void {
  process.stdout.write(line + '\n');
}

export function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

export function snapshotRow(s: Snapshot): string[] {
  return [s.id.slice(0, 8), localTime(s.time), relativeTime(s.time), s.dataset, s.host, s.summary.files, formatBytes(Number(s.summary.bytes)), formatBytes(Number(s.summary.newBytes)), s.tags.join(',')];
}


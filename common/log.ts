import { pino, type Logger } from 'pino';

/** JSON lines on stderr, so stdout stays free for command output. */
export function createLogger(level: string, name: string): Logger {
  return pino({ name, level, base: { name } }, pino.destination({ fd: 2, sync: true }));
}

export type { Logger };

import { formatBytes } from '../common/units.js';

/**
 * One self-overwriting status line on stderr, at most a few times a second, and only when
 * stderr is a terminal: logs and pipes get no carriage-return noise.
 */
export class Progress {
  private last = 0;
  private readonly started = Date.now();
  private shown = false;
  private readonly enabled: boolean;

  constructor(enabled = process.stderr.isTTY === true) {
    this.enabled = enabled;
  }

  update(files: number, bytes: number, label: string): void {
    if (!this.enabled) return;
    const now = Date.now();
    if (now - this.last < 250) return;
    this.last = now;
    const secs = (now - this.started) / 1000;
    const rate = secs > 0 ? bytes / secs : 0;
    process.stderr.write(`\r\x1b[K${label} ${files} files, ${formatBytes(bytes)}, ${formatBytes(rate)}/s, ${secs.toFixed(0)}s`);
    this.shown = true;
  }

  done(): void {
    if (this.shown) process.stderr.write('\r\x1b[K');
  }
}

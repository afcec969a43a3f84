import { describe, expect, it } from 'vitest';
import { hasTimeBinary, run, Watched } from '../bench/measure.js';

describe('bench measurements: CPU split into user and system time', () => {
  // GNU time reports a child's user and system seconds; the bench installs it with restic and borg.
  it.runIf(hasTimeBinary())('a command that lives in system calls is measured as system time, one that computes as user time', async () => {
    // 128 MiB from /dev/urandom in 1 MiB blocks: the kernel generates every byte (~0.3 s here),
    // dd's own loop runs 128 times. (One-byte blocks of /dev/zero were no good: a system call
    // that moves one byte costs the kernel about what dd's loop around it costs, and the two tied.)
    const dd = await run('dd', ['if=/dev/urandom', 'of=/dev/null', 'bs=1M', 'count=128']);
    expect(dd.systemSeconds).toBeGreaterThan(0);
    expect(dd.systemSeconds).toBeLessThanOrEqual(dd.cpuSeconds);
    expect(dd.systemSeconds).toBeGreaterThan(dd.cpuSeconds - dd.systemSeconds);

    // The clock is read once per million sums: on a VM without a fast clock every read is a system call.
    const spin = await run(process.execPath, ['-e', 'const t = Date.now(); let x = 0; do { for (let i = 0; i < 1e6; i++) x += i; } while (Date.now() - t < 400);']);
    expect(spin.cpuSeconds - spin.systemSeconds).toBeGreaterThan(spin.systemSeconds);
  });

  it("a watched process's CPU seconds split into system time for kernel work and user time for computing", async () => {
    const { closeSync, openSync, readSync } = await import('node:fs');
    const me = new Watched(process.pid);
    const delta = async (work: () => void) => {
      const before = me.cpuTimes();
      work();
      const after = me.cpuTimes();
      return { sys: after.system - before.system, user: after.user - before.user };
    };
    // 128 MiB from /dev/urandom in 1 MiB reads: ~0.35 s of the kernel generating bytes.
    const kernel = await delta(() => {
      const fd = openSync('/dev/urandom', 'r');
      const block = Buffer.alloc(1024 * 1024);
      for (let i = 0; i < 128; i++) readSync(fd, block, 0, block.length, null);
      closeSync(fd);
    });
    expect(kernel.sys).toBeGreaterThan(kernel.user);
    // The clock is read once per million sums: on a VM without a fast clock every read is a system call.
    const computing = await delta(() => {
      const t = Date.now();
      let x = 0;
      do {
        for (let i = 0; i < 1e6; i++) x += i;
      } while (Date.now() - t < 400);
      expect(x).toBeGreaterThan(0);
    });
    expect(computing.user).toBeGreaterThan(computing.sys);
  });
});

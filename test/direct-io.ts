import { constants, promises as fs } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';

/** The open-file flags of this process's descriptor on `file` (octal in /proc, as open(2) takes them). */
export async function openFlags(file: string): Promise<number> {
  for (const fd of await fs.readdir('/proc/self/fd')) {
    const target = await fs.readlink(`/proc/self/fd/${fd}`).catch(() => '');
    if (target !== file) continue;
    const info = await fs.readFile(`/proc/self/fdinfo/${fd}`, 'utf8');
    return parseInt(/^flags:\s+([0-7]+)$/m.exec(info)![1]!, 8);
  }
  throw new Error(`no descriptor open on ${file}`);
}

/**
 * Whether files under `dir` take O_DIRECT and the kernel checks its alignment (ext4, XFS):
 * what the direct-writer tests observe. tmpfs before Linux 6.6 refuses O_DIRECT at open, and
 * some filesystems take unaligned direct writes; neither is this machine's /tmp.
 */
export async function directIoChecked(dir: string): Promise<boolean> {
  if (process.platform !== 'linux' || constants.O_DIRECT === undefined) return false;
  const probe = await mkdtemp(path.join(dir, 'cairn-probe-'));
  try {
    const fh = await fs.open(path.join(probe, 'p'), constants.O_WRONLY | constants.O_CREAT | constants.O_DIRECT, 0o600);
    try {
      await fh.write(Buffer.alloc(4097).subarray(1), 0, 4096, 0);
      return false;
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'EINVAL';
    } finally {
      await fh.close();
    }
  } catch {
    return false;
  } finally {
    await rm(probe, { recursive: true, force: true });
  }
}

import { promises as fs } from 'node:fs';

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

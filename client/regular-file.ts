import { constants } from 'node:fs';

/**
 * How the client opens a file the walk saw as regular: if a FIFO or a symlink took its place
 * since, the open must neither block a thread forever (O_NONBLOCK) nor follow the link
 * (O_NOFOLLOW). Callers then check with fstat that it is still a regular file.
 */
export const READ_REGULAR_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

/** The error when that check fails: reported as a problem with that one file. */
export function noLongerRegular(abs: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${abs} is no longer a regular file`), { code: 'EINVAL' });
}

import { status } from '@grpc/grpc-js';

export const Code = status;
export type Code = status;

/** An error a user can act on: a gRPC status code and a message that names the problem. */
export class CairnError extends Error {
  constructor(
    readonly code: Code,
    message: string,
  ) {
    super(message);
    this.name = 'CairnError';
  }
}

export const invalidArgument = (msg: string) => new CairnError(status.INVALID_ARGUMENT, msg);
export const notFound = (msg: string) => new CairnError(status.NOT_FOUND, msg);
export const failedPrecondition = (msg: string) => new CairnError(status.FAILED_PRECONDITION, msg);
export const resourceExhausted = (msg: string) => new CairnError(status.RESOURCE_EXHAUSTED, msg);
export const dataLoss = (msg: string) => new CairnError(status.DATA_LOSS, msg);
export const permissionDenied = (msg: string) => new CairnError(status.PERMISSION_DENIED, msg);
export const unavailable = (msg: string) => new CairnError(status.UNAVAILABLE, msg);

export function codeName(code: number): string {
  return (status as unknown as Record<number, string>)[code] ?? `CODE_${code}`;
}

/** Reduce anything thrown (ours, gRPC's, Node's) to a code and a one-line message. */
export function toCairnError(err: unknown): CairnError {
  if (err instanceof CairnError) return err;
  const e = err as { code?: unknown; details?: unknown; message?: unknown };
  if (typeof e?.code === 'number' && typeof e.details === 'string') {
    return new CairnError(e.code as Code, e.details);
  }
  const msg = typeof e?.message === 'string' ? e.message : String(err);
  if (e?.code === 'ENOSPC') return new CairnError(status.RESOURCE_EXHAUSTED, `disk full: ${msg}`);
  return new CairnError(status.INTERNAL, msg);
}

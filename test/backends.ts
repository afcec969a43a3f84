import type { ServerOptions } from './harness.js';

/** The object stores every core suite runs against. */
export interface Backend {
  name: string;
  serverOptions(): Promise<ServerOptions>;
  cleanup?(): Promise<void>;
}

export function storeBackends(): Backend[] {
  return [{ name: 'file', serverOptions: async () => ({}) }];
}

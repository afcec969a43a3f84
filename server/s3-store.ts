import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import {
  CairnError,
  Code,
  dataLoss,
  failedPrecondition,
  invalidArgument,
  notFound,
  permissionDenied,
  unavailable,
} from '../common/errors.js';
import { BufferedWriters } from './buffered-writer.js';
import { emptyCounts, type ObjectInfo, type ObjectStore, type ObjectWriter, type RequestCounts } from './object-store.js';

export interface S3StoreOptions {
  bucket: string;
  /** Key prefix inside the bucket, without leading or trailing slash; '' for the bucket root. */
  prefix: string;
  endpoint?: string;
  region?: string;
  /** Defaults to true when an endpoint is given: MinIO, Ceph, s3rver and most self-hosted stores expect it. */
  pathStyle?: boolean;
  credentials?: { accessKeyId: string; secretAccessKey: string };
  /** Attempts per request, the first included. */
  maxAttempts?: number;
  log?: (msg: string, fields?: object) => void;
}

/** S3 refuses more keys than this in one DeleteObjects request. */
const DELETE_BATCH = 1000;
const DEFAULT_ATTEMPTS = 8;
const BACKOFF_BASE_MS = 100;
const BACKOFF_CAP_MS = 10_000;
const THROTTLE_BUDGET_MS = 3 * 60_000;
/** Keys whose last part is the BLAKE3 of the object's bytes (see object-store.ts). */
const CONTENT_ADDRESSED = /(^|\/)(packs\/[0-9a-f]{2}|index|snapshots)\/[0-9a-f]{64}$/;
const MAX_SOCKETS = 16;

const RETRYABLE_ERRNO = new Set(['ECONNRESET', 'ECONNREFUSED', 'ECONNABORTED', 'EPIPE', 'ETIMEDOUT', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);
const RETRYABLE_S3_CODES = new Set(['SlowDown', 'InternalError', 'ServiceUnavailable', 'RequestTimeout', 'ConditionalRequestConflict']);
const DENIED_S3_CODES = new Set(['AccessDenied', 'SignatureDoesNotMatch', 'InvalidAccessKeyId', 'AllAccessDisabled', 'InvalidToken', 'ExpiredToken']);

/**
 * The S3 API requires Content-MD5 on DeleteObjects. AWS also takes the CRC32 header the SDK
 * sends instead since 3.729, but MinIO before 2025 and other S3-compatible stores answer
 * 400 MissingContentMD5, and prune could then free nothing. Added before signing, so the
 * signature covers it.
 */
function withContentMd5(cmd: DeleteObjectsCommand): DeleteObjectsCommand {
  cmd.middlewareStack.add(
    (next) => async (args) => {
      const req = args.request as { headers?: Record<string, string>; body?: unknown };
      if (req.headers && (typeof req.body === 'string' || req.body instanceof Uint8Array)) {
        req.headers['content-md5'] = createHash('md5').update(req.body).digest('base64');
      }
      return next(args);
    },
    { step: 'build', name: 'cairnDeleteContentMd5' },
  );
  return cmd;
}

type Kind = 'put' | 'get' | 'list' | 'delete' | 'head';

interface SdkError {
  name?: string;
  Code?: string;
  code?: string;
  message?: string;
  retryable?: boolean;
  $metadata?: { httpStatusCode?: number };
  $response?: { statusCode?: number };
}

function httpStatus(err: unknown): number | undefined {
  const e = err as SdkError;
  return e?.$metadata?.httpStatusCode ?? e?.$response?.statusCode;
}

function s3Code(err: unknown): string {
  const e = err as SdkError;
  return e?.Code ?? e?.name ?? 'Error';
}

/** A failure on the wire with no HTTP answer: the request may or may not have reached the store. */
function isNetworkError(err: unknown): boolean {
  if (httpStatus(err) !== undefined) return false;
  const e = err as SdkError;
  return e?.name === 'TimeoutError' || (typeof e?.code === 'string' && RETRYABLE_ERRNO.has(e.code));
}

/** Asked to slow down, by name: a bare 503 is as likely a store that is down. */
function isThrottled(err: unknown): boolean {
  return httpStatus(err) === 429 || s3Code(err) === 'SlowDown';
}

function isRetryable(err: unknown): boolean {
  if (err instanceof CairnError) return false;
  if ((err as SdkError)?.retryable === true || isNetworkError(err)) return true;
  const status = httpStatus(err);
  // 501 is an answer, not an outage: the store lacks the feature (a conditional put, say).
  if (status === 429 || (status !== undefined && status >= 500 && status !== 501)) return true;
  return RETRYABLE_S3_CODES.has(s3Code(err));
}

function validateKey(key: string): void {
  if (key === '' || key.startsWith('/') || key.split('/').some((p) => p === '..' || p === '' || p === '.')) {
    throw invalidArgument(`invalid object key ${JSON.stringify(key)}`);
  }
}

/** `s3://bucket/some/prefix` → bucket and prefix (no leading or trailing slash). */
export function parseS3Url(url: string): { bucket: string; prefix: string } {
  const m = /^s3:\/\/([^/?#]+)(?:\/(.*))?$/.exec(url);
  const usage = 'expected s3://BUCKET or s3://BUCKET/PREFIX';
  if (!m) throw invalidArgument(`invalid S3 store URL ${JSON.stringify(url)}: ${usage}`);
  const bucket = m[1]!;
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    throw invalidArgument(
      `invalid bucket name ${JSON.stringify(bucket)} in ${JSON.stringify(url)}: S3 bucket names are 3-63 characters of lowercase letters, digits, dots and hyphens`,
    );
  }
  const prefix = (m[2] ?? '').replace(/\/+$/, '');
  if (prefix !== '' && (/[?#]/.test(prefix) || prefix.split('/').some((p) => p === '' || p === '.' || p === '..'))) {
    throw invalidArgument(`invalid prefix ${JSON.stringify(prefix)} in ${JSON.stringify(url)}: ${usage}, with no empty, '.' or '..' path segments`);
  }
  return { bucket, prefix };
}

/**
 * Objects in one S3 (or S3-compatible) bucket under a prefix.
 *
 * The SDK's own retries are off: one loop here retries every request, including reading a
 * response body, with exponential backoff and full jitter, so counts() sees every attempt
 * (R2 and S3 bill each one) and a PUT whose answer was lost can be settled with a HEAD.
 */
export class S3Store implements ObjectStore {
  readonly description: string;
  private readonly client: S3Client;
  private readonly bucket: string;
  private readonly endpoint: string | undefined;
  /** The store prefix with its trailing slash, or '' for the bucket root. */
  private readonly root: string;
  private readonly maxAttempts: number;
  private readonly log: (msg: string, fields?: object) => void;
  private readonly agents: http.Agent[];
  private readonly stats = emptyCounts();
  /** PutObject needs the whole body up front and each retry sends it again, so writers buffer. */
  private readonly writers = new BufferedWriters((key, data) => this.put(key, data));

  constructor(opts: S3StoreOptions) {
    const prefix = opts.prefix.replace(/^\/+|\/+$/g, '');
    this.bucket = opts.bucket;
    this.endpoint = opts.endpoint;
    this.root = prefix === '' ? '' : `${prefix}/`;
    this.description = `s3://${opts.bucket}/${prefix}${opts.endpoint ? ` at ${opts.endpoint}` : ''}`;
    this.maxAttempts = Math.max(1, opts.maxAttempts ?? DEFAULT_ATTEMPTS);
    this.log = opts.log ?? (() => undefined);
    const httpAgent = new http.Agent({ keepAlive: true, maxSockets: MAX_SOCKETS });
    const httpsAgent = new https.Agent({ keepAlive: true, maxSockets: MAX_SOCKETS });
    this.agents = [httpAgent, httpsAgent];
    this.client = new S3Client({
      endpoint: opts.endpoint,
      // Self-hosted stores ignore the region, but SigV4 needs one to sign with.
      region: opts.region ?? (opts.endpoint ? 'us-east-1' : undefined),
      forcePathStyle: opts.pathStyle ?? opts.endpoint !== undefined,
      // On AWS a bucket outside the configured region answers 301 or a bare 400 to a HEAD.
      followRegionRedirects: opts.endpoint === undefined,
      credentials: opts.credentials,
      maxAttempts: 1,
      // s3rver and some R2/Lambda adapters store aws-chunked framing as the object's bytes;
      // content is verified by our own BLAKE3 ids instead.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: {
        httpAgent,
        httpsAgent,
        connectionTimeout: 5_000,
        // An idle-socket limit rather than a whole-request one: a 16 MiB pack on a slow link
        // may take long, but a socket that moves nothing for 30 s is dead.
        socketTimeout: 30_000,
      },
    });
  }

  private fullKey(key: string): string {
    validateKey(key);
    return this.root + key;
  }

  async put(key: string, data: Buffer): Promise<void> {
    const Key = this.fullKey(key);
    let answerLost = false;
    await this.retrying('put', key, async () => {
      // A lost answer may hide a put that landed. Under a key named by the hash of its bytes
      // (packs, index segments, snapshots) the size says enough; elsewhere the bytes must match:
      // a policy or the lease record is rewritten in place with bytes of the same length.
      if (answerLost && (await this.headFull(Key))?.size === data.length && (CONTENT_ADDRESSED.test(key) || (await this.getIfExists(key))?.equals(data))) return;
      try {
        this.count('put', data.length);
        await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key, Body: data, ContentLength: data.length }));
      } catch (err) {
        answerLost ||= isNetworkError(err);
        throw err;
      }
    });
  }

  /**
   * Conditional create with `If-None-Match: *`. Some stores (s3rver, older gateways) ignore the
   * header and overwrite; a HEAD first and a read-back after catch the sequential and most racing
   * cases there, but on such stores the lease this protects is only advisory. Callers must put
   * bytes unique to themselves (a writer id), so that equal bytes mean "ours".
   */
  async putIfAbsent(key: string, data: Buffer): Promise<boolean> {
    const Key = this.fullKey(key);
    if ((await this.headFull(Key)) !== undefined) return false;
    let answerLost = false;
    const outcome = await this.retrying('putIfAbsent', key, async (): Promise<'written' | 'ours' | 'theirs'> => {
      if (answerLost) {
        const current = await this.getIfExists(key);
        if (current !== undefined) return current.equals(data) ? 'ours' : 'theirs';
      }
      try {
        this.count('put', data.length);
        await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key, Body: data, ContentLength: data.length, IfNoneMatch: '*' }));
        return 'written';
      } catch (err) {
        // 412 can answer our own earlier attempt whose reply was lost while it was still being
        // stored: the bytes say whose object it is.
        if (httpStatus(err) === 412) return (await this.getIfExists(key))?.equals(data) ? 'ours' : 'theirs';
        answerLost ||= isNetworkError(err);
        throw err;
      }
    });
    if (outcome !== 'written') return outcome === 'ours';
    return (await this.getIfExists(key))?.equals(data) ?? false;
  }

  /**
   * Creates a probe object, then asks to create it again with If-None-Match: *. AWS S3 (since
   * 2024), R2 and MinIO answer 412; s3rver and some gateways ignore the header and overwrite.
   */
  async honoursConditionalCreate(): Promise<boolean> {
    const key = `locks/probe-${randomBytes(8).toString('hex')}`;
    const Key = this.fullKey(key);
    await this.put(key, Buffer.from('probe'));
    try {
      return await this.retrying('putIfAbsent', key, async () => {
        try {
          this.count('put', 5);
          await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key, Body: 'again', ContentLength: 5, IfNoneMatch: '*' }));
          return false;
        } catch (err) {
          if (httpStatus(err) === 412) return true;
          if (httpStatus(err) === 501) return false;
          throw err;
        }
      });
    } finally {
      await this.delete([key]).catch((err: unknown) => this.log('could not delete the conditional-write probe; it is harmless', { store: this.description, key, error: (err as Error).message }));
    }
  }

  async openWriter(_dir: string): Promise<ObjectWriter> {
    return this.writers.open();
  }

  /** A PutObject lands whole or not at all and writers buffer in memory: a dead writer leaves nothing here. */
  async deleteUnfinished(_prefix: string): Promise<number> {
    return 0;
  }

  async get(key: string): Promise<Buffer> {
    const Key = this.fullKey(key);
    return this.retrying('get', key, async () => {
      this.count('get');
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key }));
      return this.readBody(res.Body as Readable | undefined, res.ContentLength);
    });
  }

  private async getIfExists(key: string): Promise<Buffer | undefined> {
    try {
      return await this.get(key);
    } catch (err) {
      if (err instanceof CairnError && err.code === Code.NOT_FOUND) return undefined;
      throw err;
    }
  }

  async getRange(key: string, offset: number, length: number): Promise<Buffer> {
    const Key = this.fullKey(key);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw invalidArgument(`invalid range offset=${offset} length=${length} for object ${key}`);
    }
    const shortObject = (endsAt: number | string) =>
      dataLoss(`object ${key} is shorter than expected: wanted bytes ${offset}..${offset + length}, it ends at ${endsAt}`);
    // An empty Range header is invalid HTTP; a HEAD still says whether the object exists.
    if (length === 0) {
      const info = await this.headFull(Key);
      if (info === undefined) throw notFound(`object ${key} does not exist in ${this.description}`);
      if (info.size < offset) throw shortObject(info.size);
      return Buffer.alloc(0);
    }
    return this.retrying('get', key, async () => {
      let res;
      try {
        this.count('get');
        res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key, Range: `bytes=${offset}-${offset + length - 1}` }));
      } catch (err) {
        if (httpStatus(err) === 416) throw shortObject(`or before byte ${offset}`);
        throw err;
      }
      // A store that ignores Range answers 200 with the whole object: trusting it would hand
      // the caller the wrong bytes, and reading it first would cost a whole pack per blob.
      // A 200 is the range only when the range is the whole object.
      // A 206 without Content-Range (some gateways drop it) is left to the length checks below.
      const partial = res.$metadata.httpStatusCode === 206;
      const from = partial && res.ContentRange ? /^bytes (\d+)-/.exec(res.ContentRange)?.[1] : undefined;
      const answered = partial ? !res.ContentRange || (from !== undefined && Number(from) === offset) : offset === 0 && (res.ContentLength ?? 0) <= length;
      if (!answered) {
        (res.Body as Readable | undefined)?.destroy();
        const what = partial ? `Content-Range "${res.ContentRange ?? ''}"` : `the whole object (${res.ContentLength ?? 'unknown'} bytes, HTTP 200)`;
        throw failedPrecondition(
          `${this.description} answered a request for bytes ${offset}..${offset + length} of ${key} with ${what}; the store does not support ranged reads, which restores and prune need: upgrade it or use another store`,
        );
      }
      const data = await this.readBody(res.Body as Readable | undefined, res.ContentLength);
      if (data.length < length) throw shortObject(offset + data.length);
      if (data.length > length) throw dataLoss(`${this.description} answered a ${length}-byte range of ${key} with ${data.length} bytes`);
      return data;
    });
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    const info = await this.headFull(this.fullKey(key));
    return info && { key, size: info.size };
  }

  private async headFull(Key: string): Promise<ObjectInfo | undefined> {
    const key = Key.slice(this.root.length);
    return this.retrying('head', key, async () => {
      try {
        this.count('head');
        const res = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key }));
        return { key, size: res.ContentLength ?? 0 };
      } catch (err) {
        // HEAD answers carry no body, so a missing bucket looks like a missing key here.
        if (httpStatus(err) === 404) return undefined;
        throw err;
      }
    });
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    if (prefix.startsWith('/')) throw invalidArgument(`invalid list prefix ${JSON.stringify(prefix)}: prefixes are relative`);
    let token: string | undefined;
    do {
      const page = await this.retrying('list', prefix, () => {
        this.count('list');
        return this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.root + prefix, ContinuationToken: token }));
      });
      for (const o of page.Contents ?? []) {
        if (o.Key !== undefined) yield { key: o.Key.slice(this.root.length), size: o.Size ?? 0 };
      }
      if (page.IsTruncated && !page.NextContinuationToken) {
        throw new CairnError(Code.INTERNAL, `${this.description} returned a truncated listing of ${prefix} without a continuation token`);
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
  }

  async delete(keys: string[]): Promise<void> {
    const fullKeys = keys.map((k) => this.fullKey(k));
    for (let i = 0; i < fullKeys.length; i += DELETE_BATCH) {
      let pending = fullKeys.slice(i, i + DELETE_BATCH);
      await this.retrying('delete', `${pending.length} keys from ${keys[i]}`, async () => {
        this.count('delete');
        const res = await this.client.send(
          withContentMd5(new DeleteObjectsCommand({ Bucket: this.bucket, Delete: { Objects: pending.map((Key) => ({ Key })), Quiet: true } })),
        );
        // Deleting a missing key is success in S3, but some stores still report it.
        const failed = (res.Errors ?? []).filter((e) => e.Code !== 'NoSuchKey');
        if (failed.length === 0) return;
        const permanent = failed.filter((e) => !RETRYABLE_S3_CODES.has(e.Code ?? ''));
        if (permanent.length > 0) {
          const first = permanent[0]!;
          throw this.toCairnError(
            { Code: first.Code, message: `${first.Message ?? ''}${permanent.length > 1 ? ` (and ${permanent.length - 1} more keys)` : ''}` },
            'delete',
            (first.Key ?? '').slice(this.root.length),
          );
        }
        pending = failed.map((e) => e.Key!);
        throw Object.assign(new Error(`${failed.length} keys failed with ${failed[0]!.Code}: ${failed[0]!.Message ?? ''}`), { retryable: true });
      });
    }
  }

  counts(): RequestCounts {
    return { ...this.stats };
  }

  async close(): Promise<void> {
    this.client.destroy();
    for (const a of this.agents) a.destroy();
  }

  /** Every attempt is a billed request, so it is counted before it is sent. */
  private count(kind: Kind, bytesUp = 0): void {
    this.stats[kind]++;
    this.stats.bytesUp += bytesUp;
  }

  private async readBody(body: Readable | undefined, expected: number | undefined): Promise<Buffer> {
    if (body === undefined) return Buffer.alloc(0);
    const chunks: Buffer[] = [];
    for await (const chunk of body) {
      chunks.push(chunk as Buffer);
      this.stats.bytesDown += (chunk as Buffer).length;
    }
    const data = Buffer.concat(chunks);
    // Node notices most truncated bodies itself; this catches a store that lies in Content-Length.
    if (expected !== undefined && data.length !== expected) {
      throw Object.assign(new Error(`response body has ${data.length} of ${expected} bytes`), { retryable: true });
    }
    return data;
  }

  private async retrying<T>(op: string, key: string, attempt: () => Promise<T>): Promise<T> {
    const started = Date.now();
    for (let n = 1; ; n++) {
      try {
        return await attempt();
      } catch (err) {
        // Throttling is the store asking for time, which S3 may need for minutes while it
        // scales a prefix: it gets a time budget, not only the attempts an outage gets.
        // (A writer lease's refresh stopped by it is fenced in writer-lease.ts, not waited for.)
        const more = n < this.maxAttempts || (isThrottled(err) && Date.now() - started < THROTTLE_BUDGET_MS);
        if (!more || !isRetryable(err)) throw this.toCairnError(err, op, key, n);
        const delayMs = Math.round(Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** (n - 1)));
        this.stats.retries++;
        this.log('s3 request failed, retrying', { store: this.description, op, key, attempt: n, delayMs, error: errorSummary(err) });
        await sleep(delayMs);
      }
    }
  }

  private toCairnError(err: unknown, op: string, key: string, attempts = 1): CairnError {
    if (err instanceof CairnError) return err;
    const code = s3Code(err);
    const status = httpStatus(err);
    if (code === 'NoSuchBucket') {
      return failedPrecondition(`bucket ${this.bucket} does not exist${this.endpoint ? ` at ${this.endpoint}` : ''}; create it or fix the store URL`);
    }
    if (code === 'NoSuchKey' || status === 404) return notFound(`object ${key} does not exist in ${this.description}`);
    if (status === 501) {
      return failedPrecondition(`${this.description} does not implement ${op} ${key} (${errorSummary(err)}); it lacks a feature cairn uses (conditional writes, ranged reads or multi-object delete): upgrade it or use another store`);
    }
    if (DENIED_S3_CODES.has(code) || status === 403) {
      return permissionDenied(`${this.description} refused ${op} ${key}: ${errorSummary(err)}; check the access key, secret key and bucket policy`);
    }
    if (isRetryable(err)) {
      return unavailable(`${this.description} failed ${op} ${key} ${attempts} times; last error: ${errorSummary(err)}`);
    }
    return new CairnError(Code.INTERNAL, `${op} ${key} on ${this.description} failed: ${errorSummary(err)}`);
  }
}

function errorSummary(err: unknown): string {
  const e = err as SdkError;
  const status = httpStatus(err);
  const code = e?.Code ?? e?.code ?? e?.name;
  return [status !== undefined ? `HTTP ${status}` : undefined, code, e?.message].filter((s) => s !== undefined && s !== '').join(' ');
}

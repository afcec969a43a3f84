import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CairnError, Code } from '../common/errors.js';
import { parseS3Url, S3Store, type S3StoreOptions } from '../server/s3-store.js';
import { LEASE_KEY, WriterLease } from '../server/writer-lease.js';
import { startFaultProxy, type FaultProxyOptions } from './s3/fault-proxy.js';
import { startS3rver, type S3rverHandle } from './s3/s3rver.js';
import { inBatches, listAll, objectStoreContract, type StoreFactory } from './store-contract.js';

interface Target {
  endpoint: string;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
  region?: string;
}

function envTarget(): Target | undefined {
  const e = process.env;
  if (!e.CAIRN_TEST_S3_ENDPOINT) return undefined;
  const missing = ['CAIRN_TEST_S3_BUCKET', 'CAIRN_TEST_S3_ACCESS_KEY', 'CAIRN_TEST_S3_SECRET_KEY'].filter((k) => !e[k]);
  if (missing.length > 0) throw new Error(`CAIRN_TEST_S3_ENDPOINT is set but ${missing.join(', ')} are not`);
  return {
    endpoint: e.CAIRN_TEST_S3_ENDPOINT,
    bucket: e.CAIRN_TEST_S3_BUCKET!,
    accessKeyId: e.CAIRN_TEST_S3_ACCESS_KEY!,
    secretAccessKey: e.CAIRN_TEST_S3_SECRET_KEY!,
    region: e.CAIRN_TEST_S3_REGION,
  };
}

const remote = envTarget();

function storeOptions(t: Target, over: Partial<S3StoreOptions> = {}): S3StoreOptions {
  return {
    bucket: t.bucket,
    prefix: `cairn-test/${randomUUID()}`,
    endpoint: t.endpoint,
    region: t.region,
    credentials: { accessKeyId: t.accessKeyId, secretAccessKey: t.secretAccessKey },
    ...over,
  };
}

/** A store under a fresh prefix; cleanup empties the prefix through a store of its own. */
function factory(target: () => Target): StoreFactory {
  return async () => {
    const opts = storeOptions(target());
    return {
      store: new S3Store(opts),
      cleanup: async () => {
        const admin = new S3Store(opts);
        try {
          await admin.delete((await listAll(admin, '')).map((o) => o.key));
        } finally {
          await admin.close();
        }
      },
    };
  };
}

/**
 * A store whose requests pass a proxy that behaves as `answer` says (a status from `override`,
 * or a refusal or an answer of its own from `demand`) and forwards everything else.
 */
async function storeAnswering(
  t: Target,
  answer: Pick<FaultProxyOptions, 'override' | 'demand'>,
  over: Partial<S3StoreOptions> = {},
): Promise<{ store: S3Store; close(): Promise<void> }> {
  const proxy = await startFaultProxy({ target: t.endpoint, faultRate: 0, seed: 1, ...answer });
  const store = new S3Store(storeOptions({ ...t, endpoint: proxy.endpoint }, over));
  return { store, close: async () => Promise.all([store.close(), proxy.stop()]).then(() => undefined) };
}

async function caught(p: Promise<unknown>): Promise<CairnError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(CairnError);
  return err as CairnError;
}

/** Tests every S3 server can show, s3rver included. */
function commonS3Suite(name: string, target: () => Target): void {
  objectStoreContract(name, factory(target));

  describe(`S3Store on ${name}`, () => {
    it('a missing bucket is FAILED_PRECONDITION naming the bucket', async () => {
      const store = new S3Store(storeOptions(target(), { bucket: `cairn-missing-${randomUUID().slice(0, 8)}` }));
      try {
        for (const call of [() => store.get('config'), () => store.put('config', Buffer.from('x')), () => listAll(store, '')]) {
          const err = await caught(call());
          expect(err.code).toBe(Code.FAILED_PRECONDITION);
          expect(err.message).toContain('cairn-missing-');
        }
      } finally {
        await store.close();
      }
    });

    it('an unknown access key is PERMISSION_DENIED with the store message', async () => {
      const t = target();
      const store = new S3Store(storeOptions({ ...t, accessKeyId: 'NOSUCHKEY0000000' }));
      try {
        const err = await caught(store.put('config', Buffer.from('x')));
        expect(err.code).toBe(Code.PERMISSION_DENIED);
        expect(err.message).toMatch(/InvalidAccessKeyId|AccessDenied/);
      } finally {
        await store.close();
      }
    });

    it('survives ~20% injected faults: 200 puts of 64 KiB, gets and a list, all with the right bytes', async () => {
      const t = target();
      const proxy = await startFaultProxy({ target: t.endpoint, faultRate: 0.2, seed: 42, delayMs: 100 });
      const logged: string[] = [];
      const store = new S3Store(storeOptions({ ...t, endpoint: proxy.endpoint }, { log: (msg) => logged.push(msg) }));
      try {
        const objects = Array.from({ length: 200 }, (_, i) => ({ key: `packs/${(i % 16).toString(16)}0/p${i}`, data: randomBytes(64 * 1024) }));
        await inBatches(objects, 16, (o) => store.put(o.key, o.data));
        await inBatches(objects, 16, async (o) => expect((await store.get(o.key)).equals(o.data), o.key).toBe(true));
        const listed = await listAll(store, 'packs/');
        expect(listed.map((o) => o.key).sort()).toEqual(objects.map((o) => o.key).sort());
        await store.delete(objects.map((o) => o.key));

        const { requests, ...injected } = proxy.counters;
        for (const [fault, n] of Object.entries(injected)) expect(n, fault).toBeGreaterThan(0);
        expect(requests).toBeGreaterThan(400);
        expect(store.counts().retries).toBeGreaterThan(0);
        expect(logged.length).toBe(store.counts().retries);
      } finally {
        await store.close();
        await proxy.stop();
      }
    });

    it('a PUT or conditional PUT whose answer was lost is settled by reading, not uploaded again', async () => {
      const t = target();
      const proxy = await startFaultProxy({ target: t.endpoint, faultRate: 0.3, seed: 7, faults: ['dropAfterForward'] });
      const store = new S3Store(storeOptions({ ...t, endpoint: proxy.endpoint }));
      try {
        // Keys named like a pack: a lost answer is settled by the object's size, with no GET.
        const objects = Array.from({ length: 12 }, (_, i) => ({ key: `packs/00/${randomBytes(32).toString('hex')}`, data: randomBytes(10_000 + i) }));
        for (const o of objects) await store.put(o.key, o.data);
        expect(store.counts().get).toBe(0);
        for (const o of objects) await store.putIfAbsent(`locks/${o.key}`, o.data).then((won) => expect(won, o.key).toBe(true));
        expect(proxy.counters.dropAfterForward).toBeGreaterThan(2);
        // Every upload reached the store once: each lost answer was resolved by reading, not resending.
        expect(store.counts().put).toBe(2 * objects.length);
        for (const o of objects) expect((await store.get(o.key)).equals(o.data)).toBe(true);
        await store.delete(objects.flatMap((o) => [o.key, `locks/${o.key}`]));
      } finally {
        await store.close();
        await proxy.stop();
      }
    });

    it('throttling is waited out past the attempts an outage gets', async () => {
      const t = target();
      let throttled = 5;
      const { store, close } = await storeAnswering(t, { override: (method) => (method === 'PUT' && throttled-- > 0 ? 429 : undefined) }, { maxAttempts: 2 });
      try {
        await store.put('packs/00/throttled', Buffer.from('stored once the store lets us'));
        expect(store.counts().retries).toBe(5);
        expect((await store.get('packs/00/throttled')).toString()).toBe('stored once the store lets us');
        await store.delete(['packs/00/throttled']);
        // An outage that is not throttling (a bare 503 too) still gets its two attempts and no more.
        const down = await storeAnswering(t, { override: (method) => (method === 'PUT' ? 503 : undefined) }, { maxAttempts: 2 });
        try {
          expect((await caught(down.store.put('packs/00/never', Buffer.from('x')))).code).toBe(Code.UNAVAILABLE);
          expect(down.store.counts().retries).toBe(1);
        } finally {
          await down.close();
        }
      } finally {
        await close();
      }
    });

    it('the conditional-write probe rides out a busy store and a refused cleanup', async () => {
      const t = target();
      // The probe's first PUT creates the object; the conditional one after it meets two 500s.
      let puts = 0;
      const { store, close } = await storeAnswering(t, {
        override: (method, url) => (url.includes('locks/probe-') && method === 'PUT' && [2, 3].includes(++puts) ? 500 : method === 'DELETE' || method === 'POST' ? 403 : undefined),
      });
      try {
        // s3rver overwrites on If-None-Match: a real S3 would answer 412 and this be true.
        expect(await store.honoursConditionalCreate()).toBe(t === remote);
        expect(store.counts().retries).toBeGreaterThanOrEqual(2);
      } finally {
        await close();
      }
    });

    it('a store that does not implement a request (HTTP 501) is told at once, not retried as an outage', async () => {
      const t = target();
      const { store, close } = await storeAnswering(t, { override: (method) => (method === 'PUT' ? 501 : undefined) });
      try {
        const err = await caught(store.putIfAbsent('locks/writer', Buffer.from('me')));
        expect(err.code).toBe(Code.FAILED_PRECONDITION);
        expect(err.message).toMatch(/ does not implement putIfAbsent locks\/writer \(HTTP 501.*\); it lacks a feature cairn uses \(conditional writes, ranged reads or multi-object delete\): upgrade it or use another store$/);
        expect(store.counts().retries).toBe(0);
      } finally {
        await close();
      }
    });

    it('a multi-object delete carries the Content-MD5 of its body, which MinIO and the S3 API require', async () => {
      const t = target();
      const deletes: Array<string | undefined> = [];
      const { store, close } = await storeAnswering(t, {
        demand: ({ method, url, headers, body }) => {
          if (method !== 'POST' || !/[?&]delete/.test(url)) return undefined;
          const md5 = headers['content-md5'] as string | undefined;
          deletes.push(md5);
          if (md5 === undefined) return { status: 400, code: 'MissingContentMD5', message: 'Missing required header for this request: Content-Md5.' };
          if (md5 !== createHash('md5').update(body).digest('base64')) return { status: 400, code: 'BadDigest', message: 'The Content-MD5 you specified did not match what we received.' };
          return undefined;
        },
      });
      try {
        const keys = ['packs/00/a', 'packs/00/b', 'snapshots/x'];
        for (const k of keys) await store.put(k, Buffer.from(k));
        await store.delete(keys);
        // s3rver can answer a multi-object delete with a 500 (two keys of one directory race
        // to remove it), which the store retries; every attempt has to carry the header.
        expect(deletes.length).toBeGreaterThan(0);
        expect(deletes.every((md5) => md5 !== undefined)).toBe(true);
        expect(await listAll(store, '')).toEqual([]);
      } finally {
        await close();
      }
    });

    it('a store that answers a range with the whole object is refused before its body is read, naming ranged reads', async () => {
      const t = target();
      const whole = randomBytes(256 * 1024);
      let ranged = 0;
      const options = storeOptions(t);
      const direct = new S3Store(options);
      const { store, close } = await storeAnswering(
        t,
        { demand: ({ method, headers }) => (method === 'GET' && headers.range !== undefined && ++ranged ? { status: 200, body: whole } : undefined) },
        { prefix: options.prefix },
      );
      try {
        await direct.put('packs/00/p', whole);
        const err = await caught(store.getRange('packs/00/p', 1000, 100));
        expect(err.code).toBe(Code.FAILED_PRECONDITION);
        expect(err.message).toMatch(/answered a request for bytes 1000\.\.1100 of packs\/00\/p with the whole object \(262144 bytes, HTTP 200\); the store does not support ranged reads/);
        expect(ranged).toBe(1);
        expect(store.counts().bytesDown).toBe(0);
        // The whole object is the answer to a range that is the whole object.
        expect((await store.getRange('packs/00/p', 0, whole.length)).equals(whole)).toBe(true);
      } finally {
        await Promise.all([close(), direct.close()]);
      }
    });

    it('a 206 without Content-Range (some gateways drop it) is taken by its length', async () => {
      const t = target();
      const whole = randomBytes(4096);
      const { store, close } = await storeAnswering(t, {
        demand: ({ method, headers }) => {
          const m = method === 'GET' ? /^bytes=(\d+)-(\d+)$/.exec(String(headers.range ?? '')) : null;
          return m ? { status: 206, body: whole.subarray(Number(m[1]), Number(m[2]) + 1) } : undefined;
        },
      });
      try {
        expect((await store.getRange('packs/00/p', 1000, 100)).equals(whole.subarray(1000, 1100))).toBe(true);
      } finally {
        await close();
      }
    });

    it('a writer whose lease refreshes keep failing stops itself, naming the expiry it could not extend', async () => {
      const t = target();
      let outage = false;
      const proxy = await startFaultProxy({ target: t.endpoint, faultRate: 0, seed: 1, override: () => (outage ? 503 : undefined) });
      const options = storeOptions(t);
      const store = new S3Store({ ...options, endpoint: proxy.endpoint });
      const direct = new S3Store(options);
      const lost: CairnError[] = [];
      const lease = new WriterLease(store, 3000, pino({ level: 'silent' }), (err) => lost.push(err));
      try {
        await lease.acquire();
        const written = (JSON.parse((await direct.get(LEASE_KEY)).toString('utf8')) as { expires: string }).expires;
        // Every request now fails slowly (retried with backoff): refreshing cannot succeed.
        outage = true;
        for (let i = 0; i < 200 && lost.length === 0; i++) await new Promise((r) => setTimeout(r, 50));
        expect(lost[0].code).toBe(Code.FAILED_PRECONDITION);
        expect(lost[0].message).toMatch(/^could not refresh the writer lease of .* before it expires at (\S+); stopping writes, so that another writer may take over safely$/);
        expect(Date.parse(lost[0].message.match(/expires at (\S+);/)![1])).toBeGreaterThanOrEqual(Date.parse(written));
        expect(lost).toHaveLength(1);
      } finally {
        outage = false;
        await lease.release();
        await direct.delete([LEASE_KEY]);
        await store.close();
        await direct.close();
        await proxy.stop();
      }
    });

    it('a rewrite of the same length whose request never arrived is sent again, not taken for landed', async () => {
      const t = target();
      const options = storeOptions(t);
      const direct = new S3Store(options);
      const proxy = await startFaultProxy({ target: t.endpoint, faultRate: 0.4, seed: 11, faults: ['dropBeforeForward'] });
      const store = new S3Store({ ...options, endpoint: proxy.endpoint });
      try {
        const keys = Array.from({ length: 20 }, (_, i) => `policies/rewrite${i}`);
        const policy = (keepDaily: number) => Buffer.from(JSON.stringify({ keepDaily }));
        for (const key of keys) await direct.put(key, policy(7));
        for (const key of keys) await store.put(key, policy(9));
        expect(proxy.counters.dropBeforeForward).toBeGreaterThan(2);
        for (const key of keys) expect((await direct.get(key)).toString(), key).toBe(policy(9).toString());
        await direct.delete(keys);
      } finally {
        await store.close();
        await direct.close();
        await proxy.stop();
      }
    });
  });
}

describe('parseS3Url', () => {
  it('splits bucket and prefix', () => {
    expect(parseS3Url('s3://my-bucket')).toEqual({ bucket: 'my-bucket', prefix: '' });
    expect(parseS3Url('s3://my-bucket/')).toEqual({ bucket: 'my-bucket', prefix: '' });
    expect(parseS3Url('s3://my-bucket/team/cairn/')).toEqual({ bucket: 'my-bucket', prefix: 'team/cairn' });
  });

  it('rejects anything else with INVALID_ARGUMENT', () => {
    for (const bad of ['', 'my-bucket/x', 'http://my-bucket/x', 's3://', 's3:///x', 's3://B/x', 's3://ab', 's3://b-1/a//b', 's3://b-1/../x']) {
      expect(() => parseS3Url(bad), bad).toThrowError(expect.objectContaining({ code: Code.INVALID_ARGUMENT }));
    }
  });
});

describe('s3rver', () => {
  let server: S3rverHandle;
  beforeAll(async () => {
    server = await startS3rver();
  });
  afterAll(async () => server?.stop());

  commonS3Suite('s3rver', () => server);
});

// Signature checks and conditional writes exist only on real servers; s3rver has neither, so these
// run only against CAIRN_TEST_S3_ENDPOINT (see test/s3/radosgw.sh) and show as skipped otherwise.
describe.runIf(remote !== undefined)(`S3 endpoint ${remote?.endpoint ?? '(CAIRN_TEST_S3_ENDPOINT unset)'}`, () => {
  const t = () => remote!;
  commonS3Suite('CAIRN_TEST_S3_ENDPOINT', t);

  it('a wrong secret key is PERMISSION_DENIED', async () => {
    const store = new S3Store(storeOptions({ ...t(), secretAccessKey: `${t().secretAccessKey}x` }));
    try {
      const err = await caught(store.get('config'));
      expect(err.code).toBe(Code.PERMISSION_DENIED);
      expect(err.message).toContain('SignatureDoesNotMatch');
    } finally {
      await store.close();
    }
  });

  it('the server answers If-None-Match: * on an existing key with 412', async () => {
    const opts = storeOptions(t());
    const key = `${opts.prefix}/locks/raw`;
    const client = new S3Client({
      endpoint: opts.endpoint,
      region: opts.region ?? 'us-east-1',
      forcePathStyle: true,
      credentials: opts.credentials,
      requestChecksumCalculation: 'WHEN_REQUIRED',
    });
    try {
      await client.send(new PutObjectCommand({ Bucket: opts.bucket, Key: key, Body: 'a', IfNoneMatch: '*' }));
      const err = await client.send(new PutObjectCommand({ Bucket: opts.bucket, Key: key, Body: 'b', IfNoneMatch: '*' })).then(
        () => undefined,
        (e: { $metadata?: { httpStatusCode?: number } }) => e,
      );
      expect(err?.$metadata?.httpStatusCode).toBe(412);
    } finally {
      client.destroy();
      const admin = new S3Store(opts);
      await admin.delete(['locks/raw']);
      await admin.close();
    }
  });

  it('putIfAbsent relies on the server refusing an existing key (If-None-Match), not only on its HEAD', async () => {
    // HEADs through this proxy always say "absent", as a stale or racing check would: only the
    // conditional PUT itself can keep the first writer's bytes.
    const proxy = await startFaultProxy({ target: t().endpoint, faultRate: 0, seed: 1, override: (method) => (method === 'HEAD' ? 404 : undefined) });
    const opts = storeOptions(t());
    const direct = new S3Store(opts);
    const blind = new S3Store({ ...opts, endpoint: proxy.endpoint });
    try {
      const first = Buffer.from('writer-1');
      expect(await direct.putIfAbsent('locks/writer', first)).toBe(true);
      expect(await blind.head('locks/writer')).toBeUndefined();
      expect(await blind.putIfAbsent('locks/writer', Buffer.from('writer-2'))).toBe(false);
      expect((await direct.get('locks/writer')).equals(first)).toBe(true);
      await direct.delete(['locks/writer']);
    } finally {
      await Promise.all([direct.close(), blind.close(), proxy.stop()]);
    }
  });
});

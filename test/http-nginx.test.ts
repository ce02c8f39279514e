import { execFile } from 'node:child_process';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { startProxy } from './helpers/app.js';
import { fetchHttp, oneConnectionAgent, sha256 } from './helpers/http-upstream.js';
import { startNginx } from './helpers/nginx.js';

/**
 * A real nginx upstream (the Debian package). nginx numbers its connections: `$connection`
 * in each response tells which upstream connection carried it.
 */
void t.test('through a real nginx: connections reused, bodies intact', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'sidepool-www-'));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const big = Buffer.alloc(8 * 1024 * 1024);
  for (let i = 0; i < big.length; i += 4) big.writeUInt32LE(i, i);
  await writeFile(join(root, 'big.bin'), big, { mode: 0o644 });
  // nginx workers may run as another user (nobody) when the tests run as root.
  await chmod(root, 0o755);
  const nginx = await startNginx(
    `root ${root};
    location = /conn { return 200 "$connection\\n"; }
    location / { }`,
    'keepalive_requests 100000;',
  );
  t.teardown(() => nginx.stop());
  const proxy = await startProxy(nginx.address, { minIdle: 0, maxSize: 4 }, { mode: 'http' });
  t.teardown(() => proxy.app.stop(100));

  const seen = new Set<string>();
  for (let i = 0; i < 30; i++) {
    const res = await fetchHttp(proxy.port, { path: '/conn' });
    t.equal(res.status, 200);
    seen.add(res.text.trim());
  }
  t.equal(seen.size, 1, '30 Connection: close clients, one nginx connection');

  const parallel = await Promise.all(
    Array.from({ length: 100 }, () => fetchHttp(proxy.port, { path: '/conn' })),
  );
  for (const res of parallel) seen.add(res.text.trim());
  t.ok(parallel.every((r) => r.status === 200));
  t.ok(seen.size <= 4, `100 concurrent clients used ${seen.size} nginx connections (maxSize 4)`);

  const file = await fetchHttp(proxy.port, { path: '/big.bin' });
  t.equal(file.status, 200);
  t.equal(sha256(file.body), sha256(big), '8 MiB file intact');

  const agent = oneConnectionAgent();
  t.teardown(() => agent.destroy());
  const head = await fetchHttp(proxy.port, { path: '/big.bin', method: 'HEAD', agent });
  t.equal(head.headers['content-length'], String(big.length));
  t.equal(head.body.length, 0);
  const etag = head.headers.etag as string;
  const notModified = await fetchHttp(proxy.port, {
    path: '/big.bin',
    headers: { 'If-None-Match': etag },
    agent,
  });
  t.equal(notModified.status, 304);
  const after = await fetchHttp(proxy.port, { path: '/conn', agent });
  t.equal(after.status, 200, 'the link is in step after HEAD and 304');
  t.equal(seen.has(after.text.trim()), true, 'and still one of the pooled connections');

  const notFound = await fetchHttp(proxy.port, { path: '/missing' });
  t.equal(notFound.status, 404);
  const m = await proxy.app.metrics.render();
  t.match(m, /sidepool_http_requests_total\{route="test",code="4xx"\} 1/);
});

const exec = promisify(execFile);

void t.test(
  'curl using sidepool as its proxy: absolute-form targets, Host from the route',
  async (t) => {
    // nginx says which virtual host it chose and the request line it was sent.
    const nginx = await startNginx('location / { return 200 "$host|$request\\n"; }');
    t.teardown(() => nginx.stop());
    const pinned = await startProxy(
      { address: nginx.address, host: 'app.internal' } as unknown as string,
      { minIdle: 0 },
      { mode: 'http' },
    );
    t.teardown(() => pinned.app.stop(100));
    const plain = await startProxy(nginx.address, { minIdle: 0 }, { mode: 'http' });
    t.teardown(() => plain.app.stop(100));
    // `curl -x` sends `GET http://admin.internal/secret?x=1 HTTP/1.1`, as to any proxy.
    const curl = async (port: number): Promise<string> =>
      (
        await exec('curl', [
          '-sS',
          '--max-time',
          '10',
          '-x',
          `http://127.0.0.1:${port}`,
          'http://admin.internal/secret?x=1',
        ])
      ).stdout;
    t.equal(await curl(pinned.port), 'app.internal|GET /secret?x=1 HTTP/1.1\n');
    t.equal(await curl(plain.port), 'admin.internal|GET /secret?x=1 HTTP/1.1\n');
  },
);

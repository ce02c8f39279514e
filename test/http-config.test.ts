import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import YAML from 'yaml';
import { App } from '../src/app.js';
import { applyFlags, destinationKey, loadConfig, parseConfig } from '../src/config/load.js';
import type { ConfigError } from '../src/errors.js';
import { fetchHttp, startHttpUpstream } from './helpers/http-upstream.js';
import { freePort } from './helpers/redis.js';
import { captureLogger, roundTrip, startEcho } from './helpers/util.js';
import { tempDir } from './helpers/tmp.js';

function issuesOf(raw: unknown): Array<{ path: string; message: string }> {
  try {
    parseConfig(raw);
  } catch (err) {
    t.equal((err as ConfigError).code, 'SIDEPOOL_CONFIG_INVALID');
    return [...(err as ConfigError).issues];
  }
  throw new Error('expected a config error');
}

const route = (extra: Record<string, unknown> = {}) => ({
  listen: '127.0.0.1:8080',
  upstream: '10.0.0.5:80',
  ...extra,
});

void t.test('http mode: defaults, and the pool idle timeout capped at upstreamKeepAlive', (t) => {
  const config = parseConfig({ routes: [route({ mode: 'http' })] });
  const r = config.routes[0];
  t.equal(r?.mode, 'http');
  t.equal(r?.upstreamKeepAlive, 4000);
  t.equal(r?.responseTimeout, 60_000);
  t.equal(r?.headersTimeout, 10_000);
  t.equal(r?.requestBodyTimeout, 60_000);
  t.equal(r?.forwardedHeaders, false);
  t.equal(r?.pool.idleTimeout, 4000, 'idle http links close at the keep-alive limit');
  const custom = parseConfig({
    routes: [
      route({
        mode: 'http',
        upstream: { address: '10.0.0.5:80', host: 'api.example.com' },
        upstreamKeepAlive: '50s',
        responseTimeout: '5s',
        headersTimeout: '2s',
        requestBodyTimeout: '30s',
        forwardedHeaders: true,
        pool: { idleTimeout: '20s' },
      }),
    ],
  }).routes[0];
  t.equal(custom?.upstream.host, 'api.example.com');
  t.equal(custom?.upstreamKeepAlive, 50_000);
  t.equal(custom?.responseTimeout, 5000);
  t.equal(custom?.headersTimeout, 2000);
  t.equal(custom?.requestBodyTimeout, 30_000);
  t.equal(custom?.forwardedHeaders, true);
  t.equal(custom?.pool.idleTimeout, 20_000, 'a shorter pool idle timeout stays');
  const tcp = parseConfig({ routes: [route()] }).routes[0];
  t.equal(tcp?.pool.idleTimeout, 300_000, 'tcp pools are untouched');
  t.end();
});

void t.test('http-only keys on a tcp route are errors that name the key', (t) => {
  const issues = issuesOf({
    routes: [
      route({
        upstream: { address: '10.0.0.5:80', host: 'x' },
        upstreamKeepAlive: '1s',
        responseTimeout: '1s',
        headersTimeout: '1s',
        requestBodyTimeout: '1s',
        forwardedHeaders: true,
      }),
    ],
  });
  t.same(issues.map((i) => i.path).sort(), [
    'routes[0].forwardedHeaders',
    'routes[0].headersTimeout',
    'routes[0].requestBodyTimeout',
    'routes[0].responseTimeout',
    'routes[0].upstream.host',
    'routes[0].upstreamKeepAlive',
  ]);
  t.ok(issues.every((i) => /mode: http/.test(i.message)));
  const bad = issuesOf({
    routes: [route({ mode: 'http', upstream: { address: '10.0.0.5:80', host: 'a b/c' } })],
  });
  t.same(
    bad.map((i) => i.path),
    ['routes[0].upstream.host'],
  );
  t.same(
    issuesOf({ routes: [route({ mode: 'udp' })] }).map((i) => i.path),
    ['routes[0].mode'],
  );
  t.end();
});

void t.test('tcp and http routes to one upstream get their own pools', async (t) => {
  const config = parseConfig({
    routes: [
      route({ name: 'raw', listen: '127.0.0.1:0', pool: { minIdle: 1 } }),
      route({ name: 'web', listen: '127.0.0.1:0', mode: 'http', pool: { minIdle: 0 } }),
    ],
    admin: false,
  });
  const [raw, web] = config.routes as [(typeof config.routes)[0], (typeof config.routes)[0]];
  t.not(destinationKey(raw), destinationKey(web));
  t.equal(destinationKey(web), '10.0.0.5:80+http');
  const parsed = applyFlags({ routes: [route()] }, { mode: 'http' });
  t.equal(parseConfig(parsed).routes[0]?.mode, 'http', '--mode http');

  const upstream = await startHttpUpstream();
  t.teardown(() => upstream.close());
  const echo = await startEcho();
  t.teardown(() => echo.close());
  const [rawPort, webPort] = [await freePort(), await freePort()];
  const { logger } = captureLogger('warn');
  const app = new App(
    parseConfig({
      admin: false,
      routes: [
        { name: 'raw', listen: `127.0.0.1:${rawPort}`, upstream: upstream.address },
        { name: 'web', listen: `127.0.0.1:${webPort}`, upstream: upstream.address, mode: 'http' },
      ],
    }),
    logger,
  );
  await app.start();
  t.teardown(() => app.stop(100));
  t.equal(app.pools.size, 2);
  t.same([...app.pools.values()].map((p) => p.name).sort(), [
    upstream.address,
    `${upstream.address}+http`,
  ]);
  t.equal((await fetchHttp(webPort)).status, 200);
  const rawReply = await roundTrip(rawPort, 'GET / HTTP/1.0\r\n\r\n');
  t.match(rawReply.toString(), /^HTTP\/1\.1 200 /, 'the tcp route still splices bytes');
});

void t.test('reload: http settings and a mode change take effect', async (t) => {
  const upstream = await startHttpUpstream();
  t.teardown(() => upstream.close());
  const port = await freePort();
  const dir = tempDir('sidepool-http-reload-');
  const path = join(dir, 'sidepool.yaml');
  const write = (extra: Record<string, unknown>) =>
    writeFile(
      path,
      YAML.stringify({
        admin: false,
        routes: [{ name: 'r', listen: `127.0.0.1:${port}`, upstream: upstream.address, ...extra }],
      }),
    );
  await write({});
  const { logger } = captureLogger('warn');
  const app = new App(await loadConfig(path), logger, { loadConfig: () => loadConfig(path) });
  await app.start();
  t.teardown(() => app.stop(100));
  const tcpPool = app.routes.get('r')?.pool;

  await write({ mode: 'http' });
  t.same(await app.reload(), { ok: true });
  const httpRoute = app.routes.get('r');
  t.not(httpRoute?.pool, tcpPool, 'a new pool for the http route');
  t.equal((await fetchHttp(port)).status, 200);

  await write({ mode: 'http', responseTimeout: '2s' });
  t.same(await app.reload(), { ok: true });
  t.not(app.routes.get('r'), httpRoute, 'the route was rebuilt with the new settings');
  t.equal(app.routes.get('r')?.pool, httpRoute?.pool, 'on the same pool');
  t.equal((await fetchHttp(port)).status, 200);
});

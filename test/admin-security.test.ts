// The admin surface: probes and metrics for kubelet and Prometheus; control and
// introspection only on loopback or with a token, never for a web page (a cross-site
// request, or DNS rebinding) or another pod.
import { writeFile } from 'node:fs/promises';
import t from 'tap';
import { parseConfig } from '../src/config/load.js';
import type { ConfigError } from '../src/errors.js';
import { startProxy } from './helpers/app.js';
import { configFile } from './helpers/config-file.js';
import { request, type HttpResult } from './helpers/http.js';
import { startEcho } from './helpers/util.js';

/** One request to 127.0.0.1:port with the headers given (Host too, when given). */
function ask(
  port: number,
  path: string,
  options: { method?: string; headers?: Record<string, string> } = {},
): Promise<HttpResult> {
  return request(port, path, options.method ?? 'GET', options.headers);
}

async function proxyWith(t: { teardown(fn: () => unknown): void }, admin: Record<string, unknown>) {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 0 }, {}, { admin });
  t.teardown(() => proxy.app.stop(100));
  return proxy;
}

void t.test('a web page cannot drive or read the admin server', async (t) => {
  const proxy = await proxyWith(t, { listen: '127.0.0.1:0' });
  const port = proxy.app.admin?.port as number;
  // fetch('http://127.0.0.1:9901/drain', { method: 'POST', mode: 'no-cors' }) from a page:
  const blind = await ask(port, '/drain', {
    method: 'POST',
    headers: {
      origin: 'http://evil.example',
      'sec-fetch-site': 'cross-site',
      'sec-fetch-mode': 'no-cors',
    },
  });
  t.equal(blind.status, 403, 'a cross-site POST is refused');
  t.same(proxy.app.readiness(), { ready: true, reasons: [] }, 'and did nothing');
  t.equal(
    (await ask(port, '/reload', { method: 'POST', headers: { origin: 'null' } })).status,
    403,
  );
  t.equal(
    (await ask(port, '/reload', { method: 'POST', headers: { 'sec-fetch-site': 'same-site' } }))
      .status,
    403,
  );
  // DNS rebinding: the page's own name, now pointing at 127.0.0.1, is its Host.
  const rebound = await ask(port, '/config', { headers: { host: `evil.example:${port}` } });
  t.equal(rebound.status, 403, 'a Host of evil.example is refused');
  t.match(rebound.body, /Host "evil\.example:\d+" is not this machine's/);
  t.equal((await ask(port, '/pools', { headers: { host: 'evil.example' } })).status, 403);
  // This machine's own names and addresses, and same-origin requests, are served.
  for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, 'localhost', `[::1]:${port}`]) {
    t.equal((await ask(port, '/config', { headers: { host } })).status, 200, `Host ${host}`);
  }
  t.equal(
    (
      await ask(port, '/pools', {
        headers: { origin: `http://127.0.0.1:${port}`, host: `127.0.0.1:${port}` },
      })
    ).status,
    200,
  );
  // Control actions are POST only.
  t.equal((await ask(port, '/drain')).status, 405);
  t.equal((await ask(port, '/reload', { method: 'PUT' })).status, 405);
  // Probes and metrics: for anyone, by any name, GET and HEAD.
  for (const path of ['/healthz', '/readyz', '/metrics']) {
    t.equal(
      (await ask(port, path, { headers: { host: 'sidepool.pods.svc:9901' } })).status,
      200,
      path,
    );
    const head = await ask(port, path, { method: 'HEAD' });
    t.equal(head.status, 200, `HEAD ${path}`);
    t.equal(head.body, '', `HEAD ${path}: no body`);
  }
  t.equal((await ask(port, '/config', { method: 'HEAD' })).status, 200, 'HEAD /config');
});

void t.test('off loopback: control only with the token', async (t) => {
  // Without a token, a non-loopback admin listener serves probes and metrics only.
  const open = await proxyWith(t, { listen: '0.0.0.0:0' });
  const openPort = open.app.admin?.port as number;
  const refused = await ask(openPort, '/reload', { method: 'POST' });
  t.equal(refused.status, 403, 'no token, not loopback: control refused');
  t.match(
    refused.body,
    /control endpoints are off on 0\.0\.0\.0:0.*admin\.controlListen.*admin\.tokenFile/,
  );
  t.equal((await ask(openPort, '/config')).status, 403);
  t.equal((await ask(openPort, '/metrics')).status, 200, 'metrics still served');
  t.equal((await ask(openPort, '/readyz')).status, 200, 'probes still served');

  const tokenFile = await configFile('s3cret-token\n', 'token');
  const guarded = await proxyWith(t, { listen: '0.0.0.0:0', tokenFile });
  const port = guarded.app.admin?.port as number;
  const none = await ask(port, '/config');
  t.equal(none.status, 401);
  t.equal(none.headers['www-authenticate'], 'Bearer realm="sidepool"');
  t.equal((await ask(port, '/config', { headers: { authorization: 'Bearer wrong' } })).status, 401);
  t.equal((await ask(port, '/config', { headers: { authorization: 's3cret-token' } })).status, 401);
  const ok = await ask(port, '/config', { headers: { authorization: 'Bearer s3cret-token' } });
  t.equal(ok.status, 200);
  t.notMatch(ok.body, /s3cret/, 'the token file path is redacted, the token never read into it');
  t.equal((await ask(port, '/metrics')).status, 200, 'metrics need no token');
  // The file is read per request: a rotated token applies at once.
  await writeFile(tokenFile, 'rotated\n');
  t.equal(
    (await ask(port, '/pools', { headers: { authorization: 'Bearer s3cret-token' } })).status,
    401,
  );
  t.equal(
    (await ask(port, '/pools', { headers: { authorization: 'Bearer rotated' } })).status,
    200,
  );
});

void t.test('controlListen: control on its own loopback listener', async (t) => {
  const proxy = await proxyWith(t, { listen: '0.0.0.0:0', controlListen: '127.0.0.1:0' });
  const main = proxy.app.admin?.port as number;
  const control = proxy.app.adminControl?.port as number;
  t.not(main, control);
  const elsewhere = await ask(main, '/pools');
  t.equal(elsewhere.status, 403);
  t.match(elsewhere.body, /served on admin\.controlListen \(127\.0\.0\.1:0\) only/);
  t.equal((await ask(main, '/metrics')).status, 200);
  t.equal((await ask(control, '/pools')).status, 200);
  t.equal((await ask(control, '/healthz')).status, 200);
  t.equal((await ask(control, '/drain', { method: 'POST' })).status, 202);
  t.match(proxy.app.readiness().reasons, ['draining'], 'the drain came through');
});

void t.test(
  'config: control off loopback needs a token; the token file must hold one',
  async (t) => {
    const issues = (admin: unknown): Array<{ path: string; message: string }> => {
      try {
        parseConfig({ admin, routes: [{ listen: '127.0.0.1:1', upstream: 'a:1' }] });
        return [];
      } catch (err) {
        return [...(err as ConfigError).issues];
      }
    };
    t.match(issues({ listen: '127.0.0.1:9901', controlListen: '0.0.0.0:9902' }), [
      { path: 'admin.controlListen', message: /reachable from other hosts.*admin\.tokenFile/ },
    ]);
    t.same(issues({ listen: '127.0.0.1:9901', controlListen: '/run/sidepool/admin.sock' }), []);
    const empty = await configFile('  \n', 'empty-token');
    t.match(issues({ controlListen: '0.0.0.0:9902', tokenFile: empty }), [
      { path: 'admin.tokenFile', message: /is empty/ },
    ]);
    t.match(issues({ hosts: ['evil example'] }), [{ path: 'admin.hosts[0]' }]);
  },
);

// Workload 6h: http mode.
// (a) Clients that open a new connection per request (wrk -H 'Connection: close', 50
//     connections) to a small response from nginx. Rows: direct to nginx; sidepool in http
//     mode (keep-alive links to nginx); nginx as a keep-alive reverse proxy (64 upstream
//     keepalive); HAProxy in mode http with `http-reuse always`. Requests/s and p99, and
//     how many upstream connections sidepool used. For context, two Node rows: the naive
//     TCP relay (a dial per connection) and node:http answering alone (no upstream), the
//     ceiling of one Node thread with a new connection per request on the same machine.
// (b) An HTTPS upstream 20 ms (round trip) away behind bench/delay-relay.mjs: a direct
//     HTTPS request per connection pays TCP connect + TLS handshake + request (3 round
//     trips); through sidepool the app speaks plain HTTP to localhost and the request goes
//     out on a warm TLS keep-alive link (1 round trip). 0.33× is the floor; target ≤ 0.4×.
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import {
  HOST,
  comparisonTable,
  establishedTo,
  fmt,
  fmtRatio,
  freePort,
  median,
  peakSampler,
  percentile,
  performance,
  record,
  rotate,
  runCommand,
  say,
  sleep,
  startChild,
  summarise,
  waitConnections,
  waitListening,
  which,
} from '../lib.mjs';
import { logSkip, startNaive, startNodeServer, startSidepoolProcess } from '../targets.mjs';

const BODY = 'hello from nginx: a small static response\n';
const SERVERNAME = 'upstream.bench';
const MAX_SIZE = 64;

let serial = 0;
const logPath = (ctx, name) =>
  path.join(ctx.tmp, `w6h-${String(++serial).padStart(2, '0')}-${name}.log`);

/** nginx with `body` as its http block contents (plus temp paths), in its own dir. */
async function startNginx(ctx, label, { workers, body }) {
  const dir = path.join(ctx.tmp, `nginx-${label}`);
  fs.mkdirSync(dir, { recursive: true });
  const conf = [
    `worker_processes ${workers};`,
    'daemon off;',
    `pid ${dir}/nginx.pid;`,
    `error_log ${dir}/error.log warn;`,
    'events { worker_connections 8192; }',
    'http {',
    '  access_log off;',
    ...['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map(
      (kind) => `  ${kind}_temp_path ${dir}/${kind};`,
    ),
    body,
    '}',
    '',
  ].join('\n');
  fs.writeFileSync(path.join(dir, 'nginx.conf'), conf);
  const child = startChild(
    `nginx-${label}`,
    ctx.tools.nginx,
    ['-c', path.join(dir, 'nginx.conf'), '-p', dir, '-e', path.join(dir, 'error.log')],
    { logFile: logPath(ctx, `nginx-${label}`) },
  );
  return { child, conf };
}

/** The upstream: nginx, one worker, a small response from `return`. */
async function startOrigin(ctx, { tls } = {}) {
  const port = await freePort();
  const listen = tls
    ? `listen ${HOST}:${port} ssl;\n    ssl_certificate ${tls.cert};\n    ssl_certificate_key ${tls.key};\n    ssl_protocols TLSv1.3;`
    : `listen ${HOST}:${port};`;
  const { child } = await startNginx(ctx, tls ? 'origin-tls' : 'origin', {
    workers: 1,
    body: `  server {\n    ${listen}\n    default_type text/plain;\n    location / { return 200 "${BODY.replace(/\n/, '\\n')}"; }\n  }`,
  });
  await waitListening(port, { child });
  return { child, port, stop: () => child.stop(5000) };
}

/** nginx as a reverse proxy with a keep-alive upstream pool, workers = CPUs (auto). */
async function startNginxProxy(ctx, upstreamPort) {
  const port = await freePort();
  const { child } = await startNginx(ctx, 'proxy', {
    workers: 'auto',
    body: [
      `  upstream origin { server ${HOST}:${upstreamPort}; keepalive ${MAX_SIZE}; }`,
      '  server {',
      `    listen ${HOST}:${port};`,
      '    location / {',
      '      proxy_pass http://origin;',
      '      proxy_http_version 1.1;',
      '      proxy_set_header Connection "";',
      '    }',
      '  }',
    ].join('\n'),
  });
  await waitListening(port, { child });
  ctx.settings.nginx ??= {};
  ctx.settings.nginx['w6h-proxy'] = {
    worker_processes: `auto (${ctx.cpus} here)`,
    upstream: `keepalive ${MAX_SIZE}, proxy_http_version 1.1, Connection ""`,
  };
  return { child, port, stop: () => child.stop(5000) };
}

/** HAProxy in mode http, `http-reuse always`, upstream connections capped at MAX_SIZE. */
async function startHaproxyHttp(ctx, upstreamPort) {
  const port = await freePort();
  const cfg = [
    'global',
    '    maxconn 8192',
    'defaults',
    '    mode http',
    '    timeout connect 5s',
    '    timeout client 60s',
    '    timeout server 60s',
    '    timeout queue 5s',
    '    http-reuse always',
    'frontend fe',
    `    bind ${HOST}:${port}`,
    '    default_backend be',
    'backend be',
    `    server s1 ${HOST}:${upstreamPort} maxconn ${MAX_SIZE}`,
    '',
  ].join('\n');
  const cfgFile = path.join(ctx.tmp, `haproxy-http-${port}.cfg`);
  fs.writeFileSync(cfgFile, cfg);
  const child = startChild('haproxy', ctx.tools.haproxy, ['-db', '-f', cfgFile], {
    logFile: logPath(ctx, 'haproxy'),
  });
  await waitListening(port, { child });
  ctx.settings.haproxy ??= {};
  ctx.settings.haproxy['w6h-http'] = {
    mode: 'http',
    'http-reuse': 'always',
    nbthread: `default (${ctx.cpus} CPUs here)`,
    serverMaxconn: MAX_SIZE,
  };
  return { child, port, stop: () => child.stop(5000) };
}

/** sidepool in http mode, with its admin endpoint for the dial and reuse counts. */
async function startHttpSidepool(
  ctx,
  { upstreamPort, label, minIdle, upstream = {}, workers = 1 },
) {
  const port = await freePort();
  const adminPort = await freePort();
  const pool = { minIdle, maxSize: MAX_SIZE, maxWaiters: 4096, acquireTimeout: '5s' };
  const config = {
    workers,
    ...(workers > 1 ? { workerSockets: ctx.workerSockets } : {}),
    admin: { listen: `${HOST}:${adminPort}` },
    log: { level: 'warn' },
    drain: { delay: 0, timeout: '2s' },
    routes: [
      {
        name: label,
        listen: `${HOST}:${port}`,
        mode: 'http',
        upstream: { address: `${HOST}:${upstreamPort}`, ...upstream },
        pool,
      },
    ],
  };
  const configFile = path.join(ctx.tmp, `sidepool-${port}.json`);
  fs.writeFileSync(configFile, JSON.stringify(config, null, 2));
  const logFile = logPath(ctx, `sidepool-${label}`);
  const child = startSidepoolProcess(ctx, configFile, logFile);
  await waitListening(port, { child });
  if (minIdle > 0) await waitConnections(child.pid, upstreamPort, minIdle, 15_000);
  const target = {
    kind: 'sidepool',
    child,
    port,
    pid: child.pid,
    label,
    logFile,
    pool,
    upstreamPort,
    async stop() {
      const wasAlive = child.alive;
      const result = { ...(await child.stop(5000)), wasAlive };
      ctx.collectSidepoolLog(target, result);
      return result;
    },
    /** Counters from /metrics: dials, reuses, responses. */
    async counters() {
      const text = await new Promise((resolve, reject) => {
        http
          .get({ host: HOST, port: adminPort, path: '/metrics', agent: false }, (res) => {
            let body = '';
            res.setEncoding('utf8');
            res.on('data', (c) => (body += c));
            res.on('end', () => resolve(body));
          })
          .on('error', reject);
      });
      const sum = (re) => [...text.matchAll(re)].reduce((n, m) => n + Number(m[1]), 0);
      return {
        dials: sum(/^sidepool_upstream_connects_total\{[^}]*result="success"[^}]*\} (\S+)$/gm),
        reuses: sum(/^sidepool_pool_reuses_total\{[^}]*\} (\S+)$/gm),
        responses: sum(/^sidepool_http_requests_total\{[^}]*\} (\S+)$/gm),
        errors: sum(/^sidepool_http_errors_total\{[^}]*\} (\S+)$/gm),
      };
    },
  };
  ctx.settings.sidepool ??= {};
  ctx.settings.sidepool[label] = {
    mode: 'http',
    ...pool,
    ...(upstream.tls ? { upstreamTls: 'verified, bench CA' } : {}),
  };
  return target;
}

/** wrk with `Connection: close`: { rps, p99 (ms), errors }. */
async function wrk(ctx, port, seconds) {
  const res = await runCommand(
    'wrk',
    ctx.tools.wrk,
    [
      '-t',
      '2',
      '-c',
      '50',
      '-d',
      `${seconds}s`,
      '--latency',
      '-H',
      'Connection: close',
      `http://${HOST}:${port}/`,
    ],
    { timeoutMs: (seconds + 30) * 1000 },
  );
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(res.stdout)?.[1]);
  const p99 = toMs(/^\s+99%\s+([\d.]+)(us|ms|s)\s*$/m.exec(res.stdout));
  const socketErrors = /Socket errors: (.*)/.exec(res.stdout)?.[1];
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(res.stdout)?.[1];
  const errors = [
    res.code !== 0
      ? `wrk exited ${res.code ?? res.signal}: ${res.stderr.trim().slice(0, 200)}`
      : '',
    socketErrors ? `socket errors: ${socketErrors}` : '',
    non2xx ? `${non2xx} non-2xx responses` : '',
  ].filter(Boolean);
  return { rps: Number.isFinite(rps) ? rps : null, p99, errors };
}

function toMs(match) {
  if (!match) return null;
  const value = Number(match[1]);
  return match[2] === 'us' ? value / 1000 : match[2] === 's' ? value * 1000 : value;
}

// ── (b) helpers ─────────────────────────────────────────────────────────────

const OPENSSL_CONFIG = `
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
[leaf]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:${SERVERNAME},IP:127.0.0.1
`;

/** A throwaway CA and a server certificate for SERVERNAME (EC P-256, one day). */
async function makePki(dir, openssl) {
  fs.mkdirSync(dir, { recursive: true });
  const file = (name) => path.join(dir, name);
  fs.writeFileSync(file('openssl.cnf'), OPENSSL_CONFIG);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const cnf = ['-config', file('openssl.cnf')];
  const steps = [
    [
      'req',
      '-x509',
      '-new',
      ...ec,
      '-keyout',
      file('ca.key'),
      '-out',
      file('ca.pem'),
      '-days',
      '1',
      '-subj',
      '/CN=sidepool bench CA',
      ...cnf,
      '-extensions',
      'v3_ca',
    ],
    [
      'req',
      '-new',
      ...ec,
      '-keyout',
      file('server.key'),
      '-out',
      file('server.csr'),
      '-subj',
      `/CN=${SERVERNAME}`,
      ...cnf,
    ],
    [
      'x509',
      '-req',
      '-in',
      file('server.csr'),
      '-CA',
      file('ca.pem'),
      '-CAkey',
      file('ca.key'),
      '-set_serial',
      '2',
      '-days',
      '1',
      '-out',
      file('server.pem'),
      '-extfile',
      file('openssl.cnf'),
      '-extensions',
      'leaf',
    ],
  ];
  for (const args of steps) {
    const res = await runCommand('openssl', openssl, args, { timeoutMs: 30_000 });
    if (res.code !== 0) throw new Error(`openssl ${args[0]} failed: ${res.stderr.trim()}`);
  }
  return { ca: file('ca.pem'), cert: file('server.pem'), key: file('server.key') };
}

/** One GET on a new connection (Connection: close); resolves with the ms to the full body. */
function timedGet(module, options, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = module.get({ ...options, agent: false, path: '/' }, (res) => {
      let n = 0;
      res.on('data', (c) => (n += c.length));
      res.on('end', () => {
        clearTimeout(timer);
        if (res.statusCode === 200 && n === BODY.length) resolve(performance.now() - t0);
        else reject(new Error(`status ${res.statusCode}, ${n} bytes`));
      });
    });
    const timer = setTimeout(
      () => req.destroy(new Error(`no response within ${timeoutMs} ms`)),
      timeoutMs,
    );
    req.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

export default {
  id: '6h',
  name: 'http',
  title: 'http mode: connection-per-request clients on keep-alive links',

  async run(ctx) {
    for (const tool of ['nginx', 'wrk']) {
      if (!ctx.tools[tool]) {
        logSkip(
          ctx,
          'workload 6h (http)',
          `${tool} not found (apt-get install ${tool === 'nginx' ? 'nginx-light' : 'wrk'})`,
        );
        return { sections: [], skipped: true };
      }
    }
    const seconds = ctx.quick ? 2 : 5;
    const problems = [];
    const samples = {};
    const upstreamUse = [];
    const peakLinks = {};
    const vsBest = [];
    const vsBest2 = [];
    const started = [];
    let origin;
    try {
      origin = await startOrigin(ctx);
      const targets = { direct: { port: origin.port } };
      targets.sidepool = await startHttpSidepool(ctx, {
        upstreamPort: origin.port,
        label: 'w6h-http',
        minIdle: 8,
      });
      started.push(targets.sidepool);
      if (ctx.workers > 1) {
        targets.sidepool2 = await startHttpSidepool(ctx, {
          upstreamPort: origin.port,
          label: `w6h-http-w${ctx.workers}`,
          minIdle: 8,
          workers: ctx.workers,
        });
        started.push(targets.sidepool2);
      }
      targets.nginx = await startNginxProxy(ctx, origin.port);
      started.push(targets.nginx);
      if (ctx.tools.haproxy) {
        targets.haproxy = await startHaproxyHttp(ctx, origin.port);
        started.push(targets.haproxy);
      }
      // For context: a Node TCP relay that dials per connection, and node:http alone.
      targets.naive = await startNaive(ctx, { upstreamPort: origin.port });
      started.push(targets.naive);
      targets['node http'] = await startNodeServer(
        ctx,
        'procs/http-hello.mjs',
        ['--body', BODY],
        'http-hello',
      );
      started.push(targets['node http']);
      const names = Object.keys(targets);
      // A short warm-up of every target, so that no run starts cold.
      for (const name of names) await wrk(ctx, targets[name].port, 1);

      for (let run = 0; run < ctx.runs; run++) {
        const rps = {};
        for (const name of rotate(names, run)) {
          const target = targets[name];
          const before = name.startsWith('sidepool') ? await target.counters() : undefined;
          const result = await wrk(ctx, target.port, seconds);
          rps[name] = result.rps;
          record(samples, 'requests/s', name, run, result.rps);
          record(samples, 'p99 ms', name, run, result.p99);
          for (const e of result.errors) problems.push(`${name}, run ${run + 1}: ${e}`);
          if (before !== undefined) {
            const after = await target.counters();
            upstreamUse.push({
              target: name,
              run: run + 1,
              dials: after.dials - before.dials,
              responses: after.responses - before.responses,
              reused: after.reuses - before.reuses,
              errors: after.errors - before.errors,
            });
          }
          say(`  run ${run + 1} ${name}: ${fmt(result.rps)} req/s, p99 ${fmt(result.p99)} ms`);
          await sleep(500);
        }
        const best = Math.max(rps.nginx ?? 0, rps.haproxy ?? 0);
        vsBest.push(rps.sidepool && best > 0 ? rps.sidepool / best : null);
        vsBest2.push(rps.sidepool2 && best > 0 ? rps.sidepool2 / best : null);
      }
      // Upstream connections, sampled in one more, unmeasured run per sidepool target: a
      // sample walks the kernel's socket table, whose TIME_WAIT sockets (the clients
      // connect per request) make it cost tens of ms, which beside the measured runs fell
      // on sidepool's only.
      for (const name of names.filter((n) => n.startsWith('sidepool'))) {
        const target = targets[name];
        const sampler = peakSampler(() => establishedTo(target.pid, origin.port));
        const result = await wrk(ctx, target.port, seconds);
        peakLinks[name] = await sampler.stop();
        for (const e of result.errors) problems.push(`${name}, connection check: ${e}`);
      }
    } finally {
      await Promise.all(started.map((t) => t.stop()));
      await origin?.stop();
    }

    // (b) HTTPS upstream over a simulated 20 ms round trip.
    const latency = {};
    const latencyNotes = [];
    const openssl = which('openssl');
    if (!openssl) {
      latencyNotes.push('skipped: openssl not found (apt-get install openssl)');
    } else {
      const n = ctx.quick ? 10 : 40;
      const warmup = 3;
      const oneWay = 10;
      const pki = await makePki(path.join(ctx.tmp, 'w6h-pki'), openssl);
      const ca = fs.readFileSync(pki.ca);
      const inner = [];
      try {
        const tlsOrigin = await startOrigin(ctx, { tls: pki });
        inner.push(tlsOrigin);
        const relay = await startNodeServer(ctx, 'delay-relay.mjs', [
          '--upstream',
          `${HOST}:${tlsOrigin.port}`,
          '--one-way',
          String(oneWay),
        ]);
        inner.push(relay);
        const sp = await startHttpSidepool(ctx, {
          upstreamPort: relay.port,
          label: 'w6h-https',
          minIdle: 4,
          upstream: { tls: { ca: pki.ca, servername: SERVERNAME } },
        });
        inner.push(sp);
        const clients = {
          direct: () =>
            timedGet(https, { host: HOST, port: relay.port, ca, servername: SERVERNAME }),
          sidepool: () => timedGet(http, { host: HOST, port: sp.port }),
        };
        for (let run = 0; run < ctx.runs; run++) {
          for (const name of rotate(Object.keys(clients), run)) {
            const times = [];
            let failures = 0;
            for (let i = 0; i < warmup + n; i++) {
              try {
                const ms = await clients[name]();
                if (i >= warmup) times.push(ms);
              } catch (err) {
                failures++;
                if (failures <= 3) problems.push(`https ${name}, run ${run + 1}: ${err.message}`);
              }
              await sleep(5);
            }
            record(latency, 'p50 ms', name, run, percentile(times, 50));
            record(latency, 'p90 ms', name, run, percentile(times, 90));
            say(
              `  https run ${run + 1} ${name}: p50 ${fmt(percentile(times, 50))} ms (${failures} failed)`,
            );
          }
        }
        latencyNotes.push(
          `bench/delay-relay.mjs (${oneWay} ms one way) in front of nginx (TLS 1.3, EC P-256); ${n} GETs in sequence after ${warmup} warm-up ones, each on a new connection with Connection: close`,
          'direct: node:https, TCP connect + TLS handshake (verified against the bench CA) + request = 3 round trips; sidepool: plain HTTP to localhost, the request goes out on a warm TLS keep-alive link (minIdle 4) = 1 round trip',
        );
      } finally {
        for (const t of inner.reverse()) await t.stop();
      }
    }

    const summary = summarise(samples, {
      pairs: [
        ['sidepool', 'haproxy'],
        ['sidepool', 'nginx'],
        ['sidepool', 'node http'],
      ],
    });
    const verdictOf = (ratio) =>
      ratio === null
        ? 'no result'
        : `${ratio >= 0.8 ? 'meets' : 'MISSES'} the target of ≥ 0.8× the faster of nginx and HAProxy: ${fmtRatio(ratio)} (median of per-run ratios)`;
    const verdict = verdictOf(median(vsBest));
    const use = (target) => upstreamUse.filter((u) => u.target === target);
    const useNote = (target, label) =>
      `${label} upstream connections: at most ${peakLinks[target] ?? 0} established at once (maxSize ${MAX_SIZE}; sampled every 250 ms in one more, unmeasured run); per run: ${use(
        target,
      )
        .map(
          (u) =>
            `${u.dials} dials for ${u.responses.toLocaleString('en-US')} responses (${u.reused.toLocaleString('en-US')} on reused links, ${u.errors} errors)`,
        )
        .join('; ')}`;
    const w = `sidepool ×${ctx.workers} workers`;
    const latencySummary = summarise(latency);
    const latencyRatio = latencySummary['p50 ms']?.ratio.sidepool;
    const latencyVerdict =
      latencyRatio === null || latencyRatio === undefined
        ? 'no result'
        : `${latencyRatio <= 0.4 ? 'meets' : 'MISSES'} the target of ≤ 0.4× direct (0.33× is the floor): ${fmtRatio(latencyRatio)}`;
    return {
      sections: [
        {
          title:
            '6h. HTTP, a new connection per request, 50 clients (wrk -H "Connection: close"; requests/s higher is better, p99 lower)',
          text: comparisonTable(summary, {
            targets: Object.keys(summary['requests/s']?.median ?? {}),
            labels: {
              nginx: 'nginx keep-alive proxy',
              haproxy: 'HAProxy http-reuse',
              naive: 'naive Node relay',
              'node http': 'node:http alone, no upstream',
              sidepool2: w,
            },
          }),
          notes: [
            `wrk -t 2 -c 50 -d ${seconds}s --latency -H 'Connection: close' against nginx (1 worker, \`return 200\` of ${BODY.length} bytes); targets in rotating order, ${ctx.runs} run(s)`,
            `sidepool ÷ nginx proxy: ${fmtRatio(summary['requests/s']?.pair['sidepool/nginx'])}; sidepool ÷ HAProxy: ${fmtRatio(summary['requests/s']?.pair['sidepool/haproxy'])}`,
            `sidepool ${verdict}`,
            useNote('sidepool', 'sidepool'),
            ...(ctx.workers > 1
              ? [
                  `${w} ${verdictOf(median(vsBest2))}`,
                  useNote('sidepool2', w),
                  `${w} ÷ node:http alone: ${fmtRatio(summary['requests/s']?.pair['sidepool2/node http'])}`,
                ]
              : []),
            `sidepool ÷ node:http alone (one Node thread answering every request itself, no upstream): ${fmtRatio(summary['requests/s']?.pair['sidepool/node http'])}`,
            `sidepool is one Node thread (with workers, one per worker); nginx (worker_processes auto) and HAProxy (nbthread default) use all ${ctx.cpus} CPUs, which wrk and the origin nginx share`,
            ...problems.map((p) => `problem: ${p}`),
          ],
        },
        {
          title:
            '6h-b. A GET to an HTTPS upstream 20 ms (round trip) away, new connection per request (ms; lower is better)',
          text: latencySummary['p50 ms']
            ? comparisonTable(latencySummary, {
                targets: ['direct', 'sidepool'],
                labels: { direct: 'direct HTTPS', sidepool: 'sidepool (HTTP → warm TLS link)' },
              })
            : 'skipped',
          notes: [...latencyNotes, `sidepool p50 ${latencyVerdict}`],
        },
      ],
      raw: { seconds, summary, upstreamUse, peakLinks, vsBest, vsBest2, latency: latencySummary },
    };
  },
};

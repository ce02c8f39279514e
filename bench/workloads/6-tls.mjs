// Workload 6: a TLS upstream.
// (a) Connect + first request to a TLS upstream 20 ms (round trip) away, behind
//     bench/delay-relay.mjs. Direct, the client pays the TCP connect (1 RTT), the TLS 1.3
//     handshake (1 RTT) and the request (1 RTT); through sidepool the app connects in plain
//     text to localhost and its request goes out on a warm link whose TCP and TLS handshakes
//     are already done: 1 RTT. 0.33× direct is the physical floor; the target is ≤ 0.37×.
// (b) CPU time of replacement dials, with and without TLS session resumption: sessions in
//     sequence through sidepool (tcp mode: each consumes a warm link, which is replaced by a
//     new dial), sidepool's CPU time (/proc utime + stime) per session.
// The upstream is bench/procs/tls-server.mjs (node:tls echo), with a throwaway CA and
// certificate made by openssl in the temp dir.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import {
  HOST,
  comparisonTable,
  cpuSeconds,
  fmt,
  freePort,
  mdTable,
  median,
  percentile,
  performance,
  record,
  rotate,
  runCommand,
  say,
  sleep,
  summarise,
  waitConnections,
  waitListening,
  which,
} from '../lib.mjs';
import { logSkip, startNodeServer, startSidepoolProcess } from '../targets.mjs';

const SERVERNAME = 'upstream.bench';
const PAYLOAD = Buffer.from('PING\r\n');

const OPENSSL_CONFIG = `
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[leaf]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:${SERVERNAME},IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
`;

/** A CA and a server certificate for SERVERNAME, EC P-256, valid for a day. */
async function makePki(dir, openssl) {
  fs.mkdirSync(dir, { recursive: true });
  const file = (name) => path.join(dir, name);
  fs.writeFileSync(file('openssl.cnf'), OPENSSL_CONFIG);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const steps = [
    ['req', '-x509', '-new', ...ec, '-keyout', file('ca.key'), '-out', file('ca.pem')]
      .concat(['-days', '1', '-subj', '/CN=sidepool bench CA', '-config', file('openssl.cnf')])
      .concat(['-extensions', 'v3_ca']),
    ['req', '-new', ...ec, '-keyout', file('server.key'), '-out', file('server.csr')].concat([
      '-subj',
      `/CN=${SERVERNAME}`,
      '-config',
      file('openssl.cnf'),
    ]),
    ['x509', '-req', '-in', file('server.csr'), '-CA', file('ca.pem'), '-CAkey', file('ca.key')]
      .concat(['-set_serial', '2', '-days', '1', '-out', file('server.pem')])
      .concat(['-extfile', file('openssl.cnf'), '-extensions', 'leaf']),
  ];
  for (const args of steps) {
    const res = await runCommand('openssl', openssl, args, { timeoutMs: 30_000 });
    if (res.code !== 0) throw new Error(`openssl ${args[0]} failed: ${res.stderr.trim()}`);
  }
  return { ca: file('ca.pem'), cert: file('server.pem'), key: file('server.key') };
}

/**
 * sidepool from dist/ with one route to a TLS upstream, config file in the temp dir; waits
 * until listening and until minIdle links are established (and a moment for their TLS
 * handshakes).
 */
async function startTlsSidepool(
  ctx,
  { upstreamPort, ca, minIdle, maxSize, sessionResumption, label },
) {
  const port = await freePort();
  const pool = { minIdle, maxSize, maxWaiters: 1024, acquireTimeout: '5s', connectTimeout: '3s' };
  const tlsSettings = { ca, servername: SERVERNAME, sessionResumption };
  const config = {
    admin: false,
    log: { level: 'warn' },
    drain: { delay: 0, timeout: '2s' },
    routes: [
      {
        name: label,
        listen: `${HOST}:${port}`,
        mode: 'tcp',
        upstream: { address: `${HOST}:${upstreamPort}`, tls: tlsSettings },
        pool,
      },
    ],
  };
  const configFile = path.join(ctx.tmp, `sidepool-${port}.json`);
  fs.writeFileSync(configFile, JSON.stringify(config, null, 2));
  const logFile = path.join(ctx.tmp, `w6-sidepool-${label}.log`);
  const child = startSidepoolProcess(ctx, configFile, logFile);
  await waitListening(port, { child });
  const target = {
    kind: 'sidepool',
    child,
    port,
    pid: child.pid,
    pool,
    configFile,
    logFile,
    label,
    upstreamPort,
    async rewarm() {
      await waitConnections(child.pid, upstreamPort, minIdle, 10_000);
      await sleep(100);
    },
    async stop() {
      const wasAlive = child.alive;
      const result = { ...(await child.stop(5000)), wasAlive };
      ctx.collectSidepoolLog(target, result);
      return result;
    },
  };
  await target.rewarm();
  ctx.settings.sidepool ??= {};
  ctx.settings.sidepool[label] = {
    mode: 'tcp',
    ...pool,
    upstreamTls: `verified (bench CA, servername ${SERVERNAME}), sessionResumption ${sessionResumption}`,
  };
  return target;
}

/** Connect, send PING, read the echo, close; resolves with the milliseconds it took. */
function once(connect, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const { socket, ready } = connect();
    let got = 0;
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no reply within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once(ready, () => socket.write(PAYLOAD));
    socket.on('data', (chunk) => {
      got += chunk.length;
      if (got < PAYLOAD.length) return;
      clearTimeout(timer);
      socket.destroy();
      resolve(performance.now() - t0);
    });
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

const plain = (port) => () => ({
  socket: net.connect({ host: HOST, port, noDelay: true }),
  ready: 'connect',
});
const direct = (port, ca) => () => ({
  socket: tls.connect({ host: HOST, port, ca, servername: SERVERNAME, noDelay: true }),
  ready: 'secureConnect',
});

/** The TLS server's handshake counts so far (full, resumed). */
async function handshakeCounts(server) {
  const seen = server.child.events.length;
  server.child.signal('SIGUSR2');
  return server.child.waitEvent(
    (e) => e.event === 'handshakes' && server.child.events.indexOf(e) >= seen,
    5000,
  );
}

export default {
  id: '6',
  name: 'tls',
  title: 'TLS upstream: warm handshakes, and resumption on replacement dials',

  async run(ctx) {
    const openssl = which('openssl');
    if (!openssl) {
      logSkip(ctx, 'workload 6 (tls)', 'openssl not found (apt-get install openssl)');
      return { sections: [], skipped: true };
    }
    const n = ctx.quick ? 10 : 50;
    const warmup = 3;
    const oneWay = 10;
    const cpuSessions = ctx.quick ? 300 : 2000;
    const pki = await makePki(path.join(ctx.tmp, 'w6-pki'), openssl);
    const ca = fs.readFileSync(pki.ca);
    const problems = [];
    const latency = {};
    const cpu = {};
    const resumedShare = {};
    let server;
    let relay;
    const started = [];
    try {
      server = await startNodeServer(ctx, 'procs/tls-server.mjs', [
        '--cert',
        pki.cert,
        '--key',
        pki.key,
      ]);
      relay = await startNodeServer(ctx, 'delay-relay.mjs', [
        '--upstream',
        `${HOST}:${server.port}`,
        '--one-way',
        String(oneWay),
      ]);

      // (a) latency over the simulated distance.
      const warm = await startTlsSidepool(ctx, {
        upstreamPort: relay.port,
        ca: pki.ca,
        minIdle: 8,
        maxSize: 64,
        sessionResumption: true,
        label: 'w6-latency',
      });
      started.push(warm);
      const targets = { direct: direct(relay.port, ca), sidepool: plain(warm.port) };
      for (let run = 0; run < ctx.runs; run++) {
        for (const name of rotate(Object.keys(targets), run)) {
          await warm.rewarm();
          const times = [];
          let failures = 0;
          for (let i = 0; i < warmup + n; i++) {
            try {
              const ms = await once(targets[name]);
              if (i >= warmup) times.push(ms);
            } catch (err) {
              failures++;
              if (failures <= 3) problems.push(`${name}, run ${run + 1}: ${err.message}`);
            }
            await sleep(5);
          }
          record(latency, 'p50 ms', name, run, percentile(times, 50));
          record(latency, 'p90 ms', name, run, percentile(times, 90));
          say(
            `  run ${run + 1} ${name}: p50 ${percentile(times, 50)?.toFixed(1)} ms (${times.length} ok, ${failures} failed)`,
          );
        }
      }

      // (b) CPU per replacement dial, straight to the TLS server (no simulated distance).
      const variants = {
        'with resumption': true,
        'without resumption': false,
      };
      for (let run = 0; run < ctx.runs; run++) {
        for (const variant of rotate(Object.keys(variants), run)) {
          const sp = await startTlsSidepool(ctx, {
            upstreamPort: server.port,
            ca: pki.ca,
            minIdle: 4,
            maxSize: 64,
            sessionResumption: variants[variant],
            label: `w6-cpu-${variants[variant] ? 'resume' : 'full'}-${run + 1}`,
          });
          started.push(sp);
          // One session first, so that a session ticket is cached before measuring.
          await once(plain(sp.port));
          await sp.rewarm();
          const countsBefore = await handshakeCounts(server);
          const cpuBefore = await cpuSeconds(sp.pid);
          let failures = 0;
          for (let i = 0; i < cpuSessions; i++) {
            try {
              await once(plain(sp.port));
            } catch (err) {
              failures++;
              if (failures <= 3) problems.push(`${variant}, run ${run + 1}: ${err.message}`);
            }
          }
          await sp.rewarm();
          const cpuAfter = await cpuSeconds(sp.pid);
          const countsAfter = await handshakeCounts(server);
          const perSessionMs = ((cpuAfter - cpuBefore) * 1000) / cpuSessions;
          record(
            cpu,
            'sidepool CPU ms per session (one replacement dial each)',
            variant,
            run,
            perSessionMs,
          );
          const full = countsAfter.full - countsBefore.full;
          const resumed = countsAfter.resumed - countsBefore.resumed;
          (resumedShare[variant] ??= []).push(
            full + resumed > 0 ? resumed / (full + resumed) : null,
          );
          say(
            `  run ${run + 1} ${variant}: ${perSessionMs.toFixed(3)} ms CPU per session; upstream saw ${full} full, ${resumed} resumed handshakes`,
          );
          await sp.stop();
          started.splice(started.indexOf(sp), 1);
        }
      }
    } finally {
      await Promise.all(started.map((t) => t.stop()));
      await relay?.stop();
      await server?.stop();
    }

    const latencySummary = summarise(latency);
    const ratio = latencySummary['p50 ms']?.ratio.sidepool;
    const verdict =
      ratio === null || ratio === undefined
        ? 'no sidepool result'
        : ratio <= 0.37
          ? `meets the target (≤ 0.37× direct; 0.33× is the floor): ${ratio.toFixed(2)}×`
          : `MISSES the target of ≤ 0.37× direct: ${ratio.toFixed(2)}×`;
    const cpuSummary = summarise(cpu, { baseline: 'without resumption' });
    const shares = Object.entries(resumedShare).map(([variant, values]) => [
      variant,
      `${fmt(median(values.map((v) => (v === null ? null : v * 100))))} %`,
    ]);
    return {
      sections: [
        {
          title:
            '6a. Connect + first request to a TLS upstream 20 ms (round trip) away (ms; lower is better)',
          text: comparisonTable(latencySummary, {
            targets: ['direct', 'sidepool'],
            labels: { direct: 'direct TLS', sidepool: 'sidepool (plain → warm TLS link)' },
          }),
          notes: [
            `bench/delay-relay.mjs (${oneWay} ms one way) in front of bench/procs/tls-server.mjs (node:tls echo, TLS 1.3); client: connect, send PING, read the echo, close; ${n} times in sequence after ${warmup} warm-up requests; p50/p90 per run, median over runs`,
            'direct TLS: TCP connect + TLS 1.3 handshake (certificate verified against the bench CA) + request = 3 round trips; sidepool: plain-text connect to localhost, the request goes out on a warm TLS link = 1 round trip',
            `sidepool p50 ${verdict}`,
            ...problems.map((p) => `problem: ${p}`),
          ],
        },
        {
          title:
            '6b. sidepool CPU time per replacement dial, with and without TLS session resumption',
          text: `${comparisonTable(cpuSummary, {
            targets: ['without resumption', 'with resumption'],
            baseline: 'without resumption',
          })}\n\n${mdTable(['variant', 'handshakes the upstream saw resumed'], shares)}`,
          notes: [
            `${cpuSessions} sessions in sequence (connect, PING, echo, close) straight to the TLS server; tcp mode uses each warm link once, so each session causes one replacement dial (TCP connect + TLS handshake); sidepool minIdle 4`,
            'CPU: sidepool process utime + stime from /proc over the sessions and the final re-warm, divided by the number of sessions (includes the relaying itself, which is the same in both variants)',
          ],
        },
      ],
      raw: {
        n,
        warmup,
        oneWay,
        cpuSessions,
        latency: latencySummary,
        cpu: cpuSummary,
        resumedShare,
      },
    };
  },
};

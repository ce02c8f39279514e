// Workload 7: failover. Three echo endpoints behind one sidepool route; 50 clients open
// short tcp sessions in a loop; one endpoint is killed, later restarted on its port. The
// figures: the share of sessions that succeed before, during (kill → ejection) and after
// the ejection (target ≥ 99.9% after), and whether the endpoint carries traffic again.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { HOST, freePort, mdTable, performance, say, sleep, waitListening } from '../lib.mjs';
import { startNodeServer, startSidepoolProcess } from '../targets.mjs';

function session(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: HOST, port, noDelay: true });
    let got = '';
    const timer = setTimeout(() => socket.destroy(), 5000);
    socket.on('connect', () => socket.end('ping'));
    socket.on('data', (c) => (got += c.toString()));
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(got === 'ping');
    });
  });
}

async function scrape(port) {
  const text = await new Promise((resolve, reject) => {
    const s = net.connect(port, HOST, () =>
      s.end('GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'),
    );
    let body = '';
    s.setEncoding('utf8');
    s.on('data', (c) => (body += c));
    s.on('end', () => resolve(body));
    s.on('error', reject);
  });
  return text;
}

function series(text, name, labels) {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`)))
      return Number(line.split(' ').pop());
  }
  return undefined;
}

export default {
  id: '7',
  name: 'failover',
  title: 'Failover: one of three endpoints killed under load',

  async run(ctx) {
    const seconds = ctx.quick ? 1 : 3;
    const endpoints = [];
    for (let i = 0; i < 3; i++) {
      endpoints.push(await startNodeServer(ctx, 'procs/echo-server.mjs', [], `echo-${i}`));
    }
    const port = await freePort();
    const admin = await freePort();
    const config = {
      admin: { listen: `${HOST}:${admin}` },
      log: { level: 'warn' },
      routes: [
        {
          name: 'failover',
          listen: `${HOST}:${port}`,
          upstream: { addresses: endpoints.map((e) => `${HOST}:${e.port}`) },
          pool: { minIdle: 16, maxSize: 128, maxWaiters: 1024 },
          health: {
            interval: '250ms',
            timeout: '250ms',
            healthyThreshold: 2,
            unhealthyThreshold: 2,
          },
          outlier: { consecutiveFailures: 3, baseEjectionTime: '30s' },
        },
      ],
    };
    const configFile = path.join(ctx.tmp, 'sidepool-failover.json');
    fs.writeFileSync(configFile, JSON.stringify(config, null, 2));
    const sidepool = startSidepoolProcess(
      ctx,
      configFile,
      path.join(ctx.tmp, 'sidepool-failover.log'),
    );
    await waitListening(port, { child: sidepool });
    await sleep(500);

    const counts = { before: [0, 0], during: [0, 0], after: [0, 0], back: [0, 0] };
    let phase = 'before';
    let running = true;
    const loops = Array.from({ length: 50 }, async () => {
      while (running) {
        const ok = await session(port);
        counts[phase][ok ? 0 : 1]++;
      }
    });
    const victim = endpoints[1];
    const victimName = `${HOST}:${victim.port}`;
    let ejectedMs;
    let backSessions;
    try {
      await sleep(seconds * 1000);
      say(`workload 7: killing endpoint ${victimName}`);
      phase = 'during';
      const killedAt = performance.now();
      await victim.stop();
      for (;;) {
        const up = series(await scrape(admin), 'sidepool_endpoint_up', { endpoint: victimName });
        if (up === 0) break;
        if (performance.now() - killedAt > 10_000) break;
        await sleep(20);
      }
      ejectedMs = performance.now() - killedAt;
      phase = 'after';
      await sleep(seconds * 1000);

      const before = series(await scrape(admin), 'sidepool_upstream_connects_total', {
        endpoint: victimName,
        result: 'success',
      });
      endpoints[1] = await startNodeServer(
        ctx,
        'procs/echo-server.mjs',
        ['--port', String(victim.port)],
        'echo-1b',
      );
      phase = 'back';
      await sleep(seconds * 1000 + 1000);
      const after = series(await scrape(admin), 'sidepool_upstream_connects_total', {
        endpoint: victimName,
        result: 'success',
      });
      backSessions = (after ?? 0) - (before ?? 0);
    } finally {
      running = false;
      await Promise.all(loops);
      await sidepool.stop(5000);
      for (const e of endpoints) await e.stop();
    }

    const rate = ([ok, failed]) =>
      ok + failed === 0 ? '–' : `${((100 * ok) / (ok + failed)).toFixed(3)}%`;
    const rows = [
      [
        'before the kill',
        counts.before[0] + counts.before[1],
        counts.before[1],
        rate(counts.before),
      ],
      [
        `kill → ejection (${Math.round(ejectedMs)} ms)`,
        counts.during[0] + counts.during[1],
        counts.during[1],
        rate(counts.during),
      ],
      [
        'after the ejection',
        counts.after[0] + counts.after[1],
        counts.after[1],
        rate(counts.after),
      ],
      ['endpoint restarted', counts.back[0] + counts.back[1], counts.back[1], rate(counts.back)],
    ];
    const afterRate = counts.after[0] / Math.max(1, counts.after[0] + counts.after[1]);
    return {
      sections: [
        {
          title:
            '7. Failover: one of three endpoints killed under 50 clients of short tcp sessions',
          text: mdTable(['phase', 'sessions', 'failed', 'succeeded'], rows),
          notes: [
            `after the ejection ${(afterRate * 100).toFixed(3)}% of sessions succeeded (target ≥ 99.9%)`,
            `the restarted endpoint took ${backSessions} new links within ${seconds + 1} s (it carries traffic again: ${backSessions > 0 ? 'yes' : 'NO'})`,
            'sidepool: minIdle 16, maxSize 128; health tcp every 250 ms (2 to flip); outlier 3 failures in a row',
          ],
        },
      ],
      raw: { counts, ejectedMs, backSessions },
    };
  },
};

// Workload 5: memory of the proxy process with many concurrent spliced connections. A hold
// client opens N connections through the proxy to an echo server, each proven spliced by a
// one-byte echo; VmRSS and the fd count of the proxy are read from /proc before, with all N
// open, and after they close. Direct has no proxy process: the comparison is with HAProxy.
import { fmt, fmtRatio, mdTable, median, rotate, say, sleep } from '../lib.mjs';
import {
  startHaproxy,
  startNaive,
  startNodeClient,
  startNodeServer,
  startSidepool,
} from '../targets.mjs';

const MiB = 1024;

export default {
  id: '5',
  name: 'rss',
  title: 'Memory with many concurrent connections',

  async run(ctx) {
    const wanted = ctx.quick ? 1000 : ctx.conns;
    const minIdle = 64;
    // A proxy holds 2 fds per spliced connection (downstream + link), plus its idle links,
    // listener and its own files.
    const limit = ctx.fdLimit.soft;
    const fit = Math.floor((limit - minIdle - 300) / 2 / 100) * 100;
    const n = Math.max(100, Math.min(wanted, fit));
    const notes = [];
    if (n < wanted) {
      const line =
        `fd limit too low: ${limit} open files (hard ${ctx.fdLimit.hard}) cannot hold ${wanted.toLocaleString('en-US')} ` +
        `spliced connections in one proxy (needs about ${(2 * wanted + minIdle + 300).toLocaleString('en-US')}: 2 per connection); ` +
        `measured ${n.toLocaleString('en-US')} instead. Raise it with \`ulimit -n 65536\` before \`npm run bench\` (needs a higher hard limit or CAP_SYS_RESOURCE)`;
      say(`  ${line}`);
      ctx.note(`workload 5: ${line}`);
      notes.push(line);
    }
    const echo = await startNodeServer(ctx, 'procs/echo-server.mjs', []);
    const proxies = ['sidepool', ...(ctx.tools.haproxy ? ['haproxy'] : []), 'naive'];
    const rows = {};
    const problems = [];
    try {
      for (let run = 0; run < ctx.runs; run++) {
        for (const name of rotate(proxies, run)) {
          const proxy =
            name === 'sidepool'
              ? await startSidepool(ctx, {
                  upstreamPort: echo.port,
                  minIdle,
                  maxSize: n + minIdle,
                  maxWaiters: n,
                  acquireTimeout: '60s',
                  label: 'w5-rss',
                })
              : name === 'haproxy'
                ? await startHaproxy(ctx, {
                    upstreamPort: echo.port,
                    serverMaxconn: n + minIdle,
                    maxconn: n + 16,
                    label: 'haproxy-w5-rss',
                  })
                : await startNaive(ctx, { upstreamPort: echo.port });
          try {
            await sleep(1000);
            const idle = proxy.stats();
            const client = startNodeClient(ctx, 'procs/hold-client.mjs', [
              '--port',
              String(proxy.port),
              '--count',
              String(n),
              '--parallel',
              '200',
            ]);
            let established;
            try {
              established = await client.waitEvent((e) => e.event === 'established', 150_000);
            } catch (err) {
              problems.push(`${name}, run ${run + 1}: ${err.message.split('\n')[0]}`);
              await client.stop();
              continue;
            }
            await sleep(1500);
            const loaded = proxy.stats();
            await client.stop();
            const closing = client.events.find((e) => e.event === 'closing');
            await sleep(2000);
            const after = proxy.stats();
            if (!idle || !loaded || !after) {
              problems.push(
                `${name}, run ${run + 1}: the proxy process was gone before the last sample`,
              );
              continue;
            }
            if (established.failed > 0) {
              problems.push(
                `${name}, run ${run + 1}: ${established.failed} of ${n} connections failed ${JSON.stringify(established.errors)}`,
              );
            }
            if (closing?.dropped > 0) {
              problems.push(
                `${name}, run ${run + 1}: ${closing.dropped} held connections were dropped by the far side`,
              );
            }
            const r = (rows[name] ??= []);
            r[run] = {
              ok: established.ok,
              openMs: established.ms,
              idleKiB: idle?.rssKiB,
              loadedKiB: loaded?.rssKiB,
              afterKiB: after?.rssKiB,
              fdsIdle: idle?.fds,
              fdsLoaded: loaded?.fds,
              fdsAfter: after?.fds,
              perConnKiB: (loaded.rssKiB - idle.rssKiB) / established.ok,
            };
            say(
              `  run ${run + 1} ${name}: ${established.ok}/${n} open in ${(established.ms / 1000).toFixed(1)} s; ` +
                `RSS ${fmt(idle.rssKiB / MiB)} → ${fmt(loaded.rssKiB / MiB)} → ${fmt(after.rssKiB / MiB)} MiB; ` +
                `fds ${idle.fds} → ${loaded.fds} → ${after.fds}`,
            );
          } finally {
            await proxy.stop();
          }
        }
      }
    } finally {
      await echo.stop();
    }
    const med = (name, key) => median((rows[name] ?? []).filter(Boolean).map((r) => r[key]));
    const perConnHa = med('haproxy', 'perConnKiB');
    const tableRows = proxies.map((name) => {
      const perConn = med(name, 'perConnKiB');
      const runsHa = rows.haproxy ?? [];
      const pairRatio = median(
        (rows[name] ?? []).map((r, i) =>
          r && runsHa[i] ? r.perConnKiB / runsHa[i].perConnKiB : null,
        ),
      );
      return [
        name === 'naive' ? 'naive relay' : name,
        fmt(med(name, 'idleKiB') / MiB),
        fmt(med(name, 'loadedKiB') / MiB),
        fmt(perConn),
        perConnHa ? fmtRatio(pairRatio) : '–',
        fmt(med(name, 'afterKiB') / MiB),
        `${fmt(med(name, 'fdsIdle'))} / ${fmt(med(name, 'fdsLoaded'))} / ${fmt(med(name, 'fdsAfter'))}`,
        fmt((med(name, 'openMs') ?? NaN) / 1000),
      ];
    });
    return {
      sections: [
        {
          title: `5. Proxy memory with ${n.toLocaleString('en-US')} concurrent spliced connections (VmRSS; lower is better)`,
          text: mdTable(
            [
              'proxy',
              'RSS idle MiB',
              `RSS with ${n.toLocaleString('en-US')} MiB`,
              'KiB per connection',
              '×haproxy',
              'RSS after close MiB',
              'fds idle / loaded / after',
              `open all, s`,
            ],
            tableRows,
          ),
          notes: [
            ...notes,
            `each connection sends 1 byte and waits for its echo (so it is spliced end to end), then stays open; opened 200 at a time by one client process`,
            `KiB per connection = (RSS with all open − RSS idle) ÷ connections; a fresh proxy process per run; "after close" is 2 s after the client closed them all`,
            `sidepool: minIdle ${minIdle}, maxSize ${n + minIdle}, maxWaiters ${n}, acquireTimeout 60s; HAProxy: global maxconn ${n + 16}, server maxconn ${n + minIdle}`,
            'no direct ratio: without a proxy there is no process to measure',
            ...problems.map((p) => `problem: ${p}`),
          ],
        },
      ],
      raw: { n, wanted, fdLimit: ctx.fdLimit, rows },
    };
  },
};

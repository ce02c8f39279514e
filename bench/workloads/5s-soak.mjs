// Workload 5 (soak): many short sessions through one sidepool process (connect, PING,
// reply, close; 50 at a time), sampling its RSS and fd count at start, middle and end to
// show growth. A shorter direct run of the same client gives the rate to compare with.
import { clearInterval, setInterval } from 'node:timers';
import {
  establishedTo,
  fmt,
  fmtRatio,
  mdTable,
  performance,
  procStats,
  say,
  sleep,
} from '../lib.mjs';
import { startNodeClient, startNodeServer, startRedis, startSidepool } from '../targets.mjs';

const MiB = 1024;

async function churn(ctx, port, sessions, expect, maxSeconds, onProgress) {
  const client = startNodeClient(ctx, 'procs/churn-client.mjs', [
    '--port',
    String(port),
    '--sessions',
    String(sessions),
    '--concurrency',
    '50',
    '--expect',
    expect,
    '--max-seconds',
    String(maxSeconds),
  ]);
  let seen = 0;
  const poll = setInterval(() => {
    const progress = client.events.filter((e) => e.event === 'progress');
    for (const e of progress.slice(seen)) onProgress?.(e);
    seen = progress.length;
  }, 250);
  try {
    return await client.waitEvent((e) => e.event === 'done', (maxSeconds + 60) * 1000);
  } finally {
    clearInterval(poll);
    await client.stop();
  }
}

export default {
  id: '5s',
  name: 'soak',
  title: 'Churn soak',

  async run(ctx) {
    const sessions = ctx.soak;
    const maxSeconds = ctx.soakMaxSeconds;
    const directSessions = Math.min(sessions, ctx.quick ? 5000 : 100_000);
    const sidepoolSettings = { minIdle: 64, maxSize: 256 };
    const useRedis = Boolean(ctx.tools['redis-server']);
    const upstream = useRedis
      ? await startRedis(ctx)
      : await startNodeServer(ctx, 'procs/echo-server.mjs', []);
    const expect = useRedis ? '+PONG\r\n' : 'PING\r\n';
    const samples = [];
    const problems = [];
    let direct;
    let soak;
    let linksAtEnd;
    let sidepool;
    try {
      say(`  direct: ${directSessions.toLocaleString('en-US')} sessions for the reference rate`);
      direct = await churn(ctx, upstream.port, directSessions, expect, maxSeconds);
      say(`  direct: ${Math.round(direct.perSec)} sessions/s`);
      sidepool = await startSidepool(ctx, {
        upstreamPort: upstream.port,
        ...sidepoolSettings,
        label: 'w5-soak',
      });
      await sleep(1000);
      const t0 = performance.now();
      const take = (label, done) => {
        const s = procStats(sidepool.pid);
        samples.push({ label, done, seconds: (performance.now() - t0) / 1000, ...s });
        return s;
      };
      take('start', 0);
      let middleTaken = false;
      let lastPeriodic = 0;
      say(`  sidepool: ${sessions.toLocaleString('en-US')} sessions (bounded at ${maxSeconds} s)`);
      soak = await churn(ctx, sidepool.port, sessions, expect, maxSeconds, (e) => {
        if (!middleTaken && e.done >= sessions / 2) {
          middleTaken = true;
          const s = take('middle', e.done);
          say(`  middle: ${e.done} done, RSS ${fmt(s?.rssKiB / MiB)} MiB, fds ${s?.fds}`);
        } else if (performance.now() - lastPeriodic > 10_000) {
          lastPeriodic = performance.now();
          take('periodic', e.done);
        }
      });
      take('load end', soak.done);
      await sleep(3000);
      const end = take('end (3 s after)', soak.done);
      linksAtEnd = establishedTo(sidepool.pid, upstream.port);
      say(
        `  sidepool: ${soak.done} done in ${soak.seconds.toFixed(0)} s (${Math.round(soak.perSec)}/s), RSS ${fmt(end?.rssKiB / MiB)} MiB, fds ${end?.fds}`,
      );
      if (soak.failed > 0)
        problems.push(`sidepool: ${soak.failed} sessions failed ${JSON.stringify(soak.errors)}`);
      if (direct.failed > 0)
        problems.push(`direct: ${direct.failed} sessions failed ${JSON.stringify(direct.errors)}`);
      if (soak.timedOut) {
        problems.push(
          `the soak stopped at the ${maxSeconds} s bound after ${soak.done.toLocaleString('en-US')} of ${sessions.toLocaleString('en-US')} sessions`,
        );
      }
    } finally {
      await sidepool?.stop();
      await upstream.stop();
    }
    const pick = (label) => samples.find((s) => s.label === label);
    const start = pick('start');
    const middle = pick('middle');
    const end = pick('end (3 s after)');
    const peak = samples.reduce((m, s) => (s.rssKiB > (m?.rssKiB ?? 0) ? s : m), undefined);
    const peakFds = Math.max(...samples.map((s) => s.fds ?? 0));
    const shown = samples;
    const table = mdTable(
      ['sample', 'sessions done', 'at s', 'RSS MiB', 'fds'],
      shown.map((s) => [
        s.label,
        s.done.toLocaleString('en-US'),
        fmt(s.seconds),
        fmt(s.rssKiB / MiB),
        s.fds,
      ]),
    );
    const growth = (a, b, key) => (a && b ? b[key] - a[key] : null);
    const lateGrowth = growth(middle, end, 'rssKiB');
    if (start && lateGrowth !== null && lateGrowth > 0.2 * start.rssKiB) {
      const perSession = (lateGrowth * 1024) / Math.max(1, end.done - middle.done);
      problems.push(
        `RSS kept growing in the second half: +${fmt(lateGrowth / MiB)} MiB over ${(end.done - middle.done).toLocaleString('en-US')} sessions (~${fmt(perSession)} bytes per session): a leak per session, or a heap that has not settled yet`,
      );
    }
    if (start && end && end.fds - start.fds > 8) {
      problems.push(
        `fds grew from ${start.fds} to ${end.fds} after the load settled: sockets left open`,
      );
    }
    const rateRatio = soak && direct ? soak.perSec / direct.perSec : null;
    return {
      sections: [
        {
          title: `5 (soak). Churn of ${soak?.done.toLocaleString('en-US') ?? 0} short sessions through one sidepool process`,
          text: table,
          notes: [
            `each session: connect, send PING, read the reply, close; 50 concurrent; upstream ${useRedis ? 'redis-server' : 'echo server'}; sidepool minIdle ${sidepoolSettings.minIdle}, maxSize ${sidepoolSettings.maxSize}`,
            `growth start → end: RSS ${fmt(growth(start, end, 'rssKiB') / MiB)} MiB, fds ${growth(start, end, 'fds')}; middle → end: RSS ${fmt(growth(middle, end, 'rssKiB') / MiB)} MiB, fds ${growth(middle, end, 'fds')}; peak RSS ${fmt(peak?.rssKiB / MiB)} MiB, peak fds ${peakFds} (samples every ~10 s)`,
            `upstream links established at the end: ${linksAtEnd} (minIdle ${sidepoolSettings.minIdle})`,
            `rate: sidepool ${fmt(soak?.perSec)} sessions/s vs direct ${fmt(direct?.perSec)} sessions/s (${directSessions.toLocaleString('en-US')} sessions, same client) = ${fmtRatio(rateRatio)} (one soak, not a median: see workload 3 for the per-connection rate over ${ctx.runs} runs)`,
            ...problems.map((p) => `problem: ${p}`),
          ],
        },
      ],
      raw: { sessions, maxSeconds, direct, soak, samples, linksAtEnd, sidepool: sidepoolSettings },
    };
  },
};

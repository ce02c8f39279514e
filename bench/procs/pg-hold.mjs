// Holds N logged-in PostgreSQL clients open (idle) through a port, then waits to be killed.
// Prints {"event":"ready","clients":N} once all are in, or {"event":"error",...}.
import pg from 'pg';

const [port, count, user, password, database] = process.argv.slice(2);
const n = Number(count);
const clients = [];
let failed = 0;
const batch = 50;
for (let i = 0; i < n; i += batch) {
  await Promise.all(
    Array.from({ length: Math.min(batch, n - i) }, async () => {
      const c = new pg.Client({ host: '127.0.0.1', port: Number(port), user, password, database });
      c.on('error', () => {});
      try {
        await c.connect();
        clients.push(c);
      } catch {
        failed++;
      }
    }),
  );
}
process.stdout.write(`${JSON.stringify({ event: 'ready', clients: clients.length, failed })}\n`);
setInterval(() => {}, 60_000);

import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startProcess } from './process.js';
import { freePort } from './redis.js';
import { until } from './util.js';

export interface DnsServer {
  port: number;
  address: string;
  /** Replaces the records (name → addresses) and makes dnsmasq re-read them. */
  setRecords(records: Record<string, string[]>): Promise<void>;
  stop(): Promise<void>;
}

const HOSTS_READ = /read .*hosts/g;

/** A real DNS server (dnsmasq, Debian package dnsmasq-base) on a loopback port. */
export async function startDns(records: Record<string, string[]>): Promise<DnsServer> {
  const dir = await mkdtemp(join(tmpdir(), 'sidepool-dns-'));
  const hosts = join(dir, 'hosts');
  const write = (r: Record<string, string[]>): Promise<void> =>
    writeFile(
      hosts,
      Object.entries(r)
        .flatMap(([name, ips]) => ips.map((ip) => `${ip} ${name}\n`))
        .join(''),
    );
  await write(records);
  const port = await freePort();
  const server = await startProcess({
    command: 'dnsmasq',
    args: [
      '--keep-in-foreground',
      `--port=${port}`,
      '--listen-address=127.0.0.1',
      '--bind-interfaces',
      '--no-resolv',
      '--no-hosts',
      `--addn-hosts=${hosts}`,
      '--pid-file=',
      '--user=root',
      '--log-facility=-',
    ],
    debianPackage: 'dnsmasq-base',
    ready: { output: /read .*hosts/ },
  }).catch(async (err: unknown) => {
    await rm(dir, { recursive: true, force: true });
    throw err;
  });
  const reads = (): number => (server.output().match(HOSTS_READ) ?? []).length;
  return {
    port,
    address: `127.0.0.1:${port}`,
    async setRecords(r) {
      await write(r);
      const before = reads();
      server.process.kill('SIGHUP');
      await until(() => reads() > before, 30_000, 'dnsmasq to re-read its hosts file');
    },
    async stop() {
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

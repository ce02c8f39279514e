import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './redis.js';

export interface DnsServer {
  port: number;
  address: string;
  /** Replaces the records (name → addresses) and makes dnsmasq re-read them. */
  setRecords(records: Record<string, string[]>): Promise<void>;
  stop(): Promise<void>;
}

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
  const child: ChildProcess = spawn(
    'dnsmasq',
    [
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
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  child.stdout?.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr?.on('data', (c: Buffer) => (output += c.toString()));
  await new Promise<void>((resolve, reject) => {
    child.once('error', (err) =>
      reject(new Error(`cannot start dnsmasq (is dnsmasq-base installed?): ${err.message}`)),
    );
    child.once('exit', (code) => reject(new Error(`dnsmasq exited ${code}: ${output}`)));
    const poll = setInterval(() => {
      if (/read .*hosts/.test(output)) {
        clearInterval(poll);
        resolve();
      }
    }, 10);
  });
  return {
    port,
    address: `127.0.0.1:${port}`,
    async setRecords(r) {
      await write(r);
      const reads = (output.match(/read .*hosts/g) ?? []).length;
      child.kill('SIGHUP');
      await new Promise<void>((resolve) => {
        const poll = setInterval(() => {
          if ((output.match(/read .*hosts/g) ?? []).length > reads) {
            clearInterval(poll);
            resolve();
          }
        }, 10);
      });
    },
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}

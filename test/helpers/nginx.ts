import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startProcess } from './process.js';
import { freePort } from './redis.js';

export interface Nginx {
  port: number;
  address: string;
  process: ChildProcess;
  stop(): Promise<void>;
}

/** nginx as installed by the Debian package (nginx-light), for tests and the bench. */
export const NGINX = '/usr/sbin/nginx';

/**
 * A real nginx on a free loopback port, one worker, everything under a temp dir. `server`
 * is the body of the server block (after `listen`), `http` extra http-level directives.
 */
export async function startNginx(server: string, http = ''): Promise<Nginx> {
  const dir = await mkdtemp(join(tmpdir(), 'sidepool-nginx-'));
  const port = await freePort();
  const conf = `
worker_processes 1;
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  ${http}
  server {
    listen 127.0.0.1:${port};
    ${server}
  }
}
`;
  await writeFile(join(dir, 'nginx.conf'), conf);
  const nginx = await startProcess({
    command: NGINX,
    args: ['-c', join(dir, 'nginx.conf'), '-p', dir, '-e', join(dir, 'error.log')],
    debianPackage: 'nginx-light',
    ready: { port },
  }).catch(async (err: unknown) => {
    await rm(dir, { recursive: true, force: true });
    throw err;
  });
  return {
    port,
    address: `127.0.0.1:${port}`,
    process: nginx.process,
    stop: async () => {
      await nginx.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

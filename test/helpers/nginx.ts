import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitForPort } from './redis.js';

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
  const child = spawn(
    NGINX,
    ['-c', join(dir, 'nginx.conf'), '-p', dir, '-e', join(dir, 'error.log')],
    {
      stdio: 'ignore',
    },
  );
  const failed = new Promise<never>((_, reject) => {
    child.once('error', (err) =>
      reject(new Error(`cannot start nginx (apt-get install nginx-light): ${err.message}`)),
    );
    child.once('exit', (code) => reject(new Error(`nginx exited with ${code}`)));
  });
  await Promise.race([waitForPort(port), failed]);
  failed.catch(() => {});
  return {
    port,
    address: `127.0.0.1:${port}`,
    process: child,
    stop: () =>
      new Promise<void>((resolve) => {
        const done = (): void => {
          void rm(dir, { recursive: true, force: true }).then(() => resolve());
        };
        if (child.exitCode !== null) return done();
        child.once('exit', done);
        child.kill('SIGTERM');
      }),
  };
}

import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type http from 'node:http';
import net from 'node:net';

/** How control requests (`/reload`, `/drain`, `/config`, `/pools`) are let in. */
export interface ControlPolicy {
  /** A file whose content (trimmed) is the bearer token every control request must carry. */
  tokenFile?: string | undefined;
  /** Host names accepted besides localhost and IP addresses. */
  hosts?: readonly string[] | undefined;
}

/** Why a control request is refused: its status, what to say, and headers to add. */
export interface Refusal {
  status: 401 | 403;
  message: string;
  headers?: Record<string, string>;
}

/**
 * Checks a control request, in order:
 *
 * 1. `Host` names this machine: an IP address, `localhost` (or `*.localhost`), or a name in
 *    `hosts`. A web page that rebinds its own DNS name to 127.0.0.1 sends its name, so it
 *    cannot read `/config` or drive `/reload`; an IP address is never a rebound name.
 * 2. No other web origin: a browser sends `Origin` (and `Sec-Fetch-Site`) with a
 *    cross-site request, even one it sends blind (`fetch(url, { mode: 'no-cors' })`); a
 *    request whose `Origin` is not its own `Host`, or whose `Sec-Fetch-Site` is
 *    `cross-site` or `same-site`, is refused. curl, kubectl and scripts send neither.
 * 3. With a token file: `Authorization: Bearer <token>`, compared in constant time (on
 *    SHA-256 digests, so that the length does not leak either). The file is read on each
 *    request: a rotated Secret applies at once.
 */
export async function controlRefusal(
  req: http.IncomingMessage,
  policy: ControlPolicy,
): Promise<Refusal | undefined> {
  const host = req.headers.host;
  if (host !== undefined && !hostAccepted(hostName(host), policy.hosts ?? [])) {
    return {
      status: 403,
      message: `Host ${JSON.stringify(host)} is not this machine's: send 127.0.0.1, localhost, or a name in admin.hosts`,
    };
  }
  const origin = req.headers.origin;
  if (origin !== undefined && origin !== `http://${host}` && origin !== `https://${host}`) {
    return { status: 403, message: `a request from another origin (${origin}) is refused` };
  }
  const site = req.headers['sec-fetch-site'];
  if (site !== undefined && site !== 'same-origin' && site !== 'none') {
    return { status: 403, message: `a ${site} request is refused` };
  }
  if (policy.tokenFile !== undefined) {
    const expected = await readToken(policy.tokenFile);
    const given = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '')?.[1];
    if (expected === undefined || given === undefined || !sameSecret(given, expected)) {
      return {
        status: 401,
        message: 'control needs Authorization: Bearer <the token in admin.tokenFile>',
        headers: { 'WWW-Authenticate': 'Bearer realm="sidepool"' },
      };
    }
  }
  return undefined;
}

function sameSecret(given: string, expected: string): boolean {
  const digest = (text: string): Buffer => createHash('sha256').update(text).digest();
  return timingSafeEqual(digest(given), digest(expected));
}

async function readToken(file: string): Promise<string | undefined> {
  try {
    const token = (await readFile(file, 'utf8')).trim();
    return token === '' ? undefined : token;
  } catch {
    return undefined;
  }
}

/** The host of a Host header: without its port, IPv6 without brackets. */
function hostName(header: string): string {
  const value = header.trim().toLowerCase();
  if (value.startsWith('['))
    return value.slice(1, value.indexOf(']') < 0 ? undefined : value.indexOf(']'));
  const colon = value.lastIndexOf(':');
  return colon >= 0 && /^\d*$/.test(value.slice(colon + 1)) ? value.slice(0, colon) : value;
}

function hostAccepted(host: string, hosts: readonly string[]): boolean {
  if (net.isIP(host) !== 0) return true;
  if (host === 'localhost' || host.endsWith('.localhost')) return true;
  return hosts.some((name) => name.toLowerCase() === host);
}

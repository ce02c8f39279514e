#!/usr/bin/env node
// Installs the Debian packages the tests drive (scripts/debian-packages.txt) when any is
// missing: as root with apt-get, else through sudo. Where it cannot (no apt-get, no sudo,
// or sudo wants a password and nobody is at a terminal), it fails at once and prints the
// one command that would. `npm test` runs it first; `--check` only reports.
//
//   node scripts/provision-test-deps.mjs [--check] [--list]
//
// SIDEPOOL_DEBIAN_PACKAGES names another list (its own test uses one).
import { spawnSync } from 'node:child_process';
import { accessSync, constants, readFileSync } from 'node:fs';
import path from 'node:path';
import process from 'node:process';
import { fileURLToPath } from 'node:url';

const LIST =
  process.env.SIDEPOOL_DEBIAN_PACKAGES ??
  fileURLToPath(new URL('debian-packages.txt', import.meta.url));
/** Where Debian puts servers (nginx, dnsmasq, haproxy…); a non-root PATH often lacks them. */
export const SBIN = ['/usr/local/sbin', '/usr/sbin', '/sbin'];

/** The packages and, for each, the files that show it is installed. */
export function debianPackages(file = LIST) {
  return readFileSync(file, 'utf8')
    .split('\n')
    .map((line) => line.replace(/#.*$/, '').trim())
    .filter((line) => line !== '')
    .map((line) => {
      const [name, ...probes] = line.split(/\s+/);
      return { name, probes };
    });
}

/** PATH with the sbin directories added: the PATH the tests run with. */
export function testPath(envPath = process.env.PATH ?? '') {
  const dirs = envPath.split(path.delimiter).filter((d) => d !== '');
  return [...dirs, ...SBIN.filter((d) => !dirs.includes(d))].join(path.delimiter);
}

function executable(file) {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function found(probe, searchPath) {
  if (path.isAbsolute(probe)) return executable(probe);
  return searchPath.split(path.delimiter).some((dir) => executable(path.join(dir, probe)));
}

/** The packages with a probe that is not there. */
export function missingPackages(packages = debianPackages(), searchPath = testPath()) {
  return packages.filter((p) => p.probes.some((probe) => !found(probe, searchPath)));
}

function run(argv, options = {}) {
  const [cmd, ...args] = argv;
  const result = spawnSync(cmd, args, { stdio: 'inherit', ...options });
  if (result.error) return { ok: false, why: result.error.message };
  return { ok: result.status === 0, why: `exit ${result.status ?? result.signal}` };
}

function quiet(argv) {
  const [cmd, ...args] = argv;
  const result = spawnSync(cmd, args, { stdio: 'ignore', timeout: 10_000 });
  return result.error === undefined && result.status === 0;
}

/** How to become root for apt-get: '' (we are), 'sudo -n', 'sudo' (it may ask), or null. */
function rootPrefix() {
  if (process.getuid?.() === 0) return [];
  if (!found('sudo', testPath())) return null;
  if (quiet(['sudo', '-n', 'true'])) return ['sudo', '-n'];
  return process.stdin.isTTY ? ['sudo'] : null;
}

function installCommand(names) {
  return (
    'sudo apt-get update && sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y ' +
    `--no-install-recommends ${names.join(' ')}`
  );
}

function main(argv) {
  const packages = debianPackages();
  if (argv.includes('--list')) {
    console.log(packages.map((p) => p.name).join(' '));
    return 0;
  }
  const missing = missingPackages(packages);
  if (missing.length === 0) {
    console.log(`test deps: all ${packages.length} Debian packages present`);
    return 0;
  }
  const names = missing.map((p) => p.name);
  const what = missing.map((p) => `${p.name} (${p.probes.join(', ')})`).join('; ');
  console.error(`test deps: missing ${what}`);
  if (argv.includes('--check')) {
    console.error(`test deps: install them with:\n  ${installCommand(names)}`);
    return 1;
  }
  const prefix = rootPrefix();
  if (!found('apt-get', testPath()) || prefix === null) {
    const why = !found('apt-get', testPath())
      ? 'no apt-get here (the list is of Debian packages: install their equivalents)'
      : 'not root, and sudo is missing or wants a password with no terminal to ask on';
    console.error(`test deps: cannot install them: ${why}. The command that would:`);
    console.error(`  ${installCommand(names)}`);
    return 1;
  }
  console.error(
    `test deps: installing ${names.join(' ')} with ${[...prefix, 'apt-get'].join(' ')}`,
  );
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const asRoot = (args) =>
    run([...prefix, 'env', 'DEBIAN_FRONTEND=noninteractive', ...args], { env });
  const update = asRoot(['apt-get', 'update', '-qq']);
  if (!update.ok) {
    console.error(`test deps: apt-get update failed (${update.why})`);
    return 1;
  }
  const install = asRoot(['apt-get', 'install', '-y', '-qq', '--no-install-recommends', ...names]);
  if (!install.ok) {
    console.error(`test deps: apt-get install failed (${install.why})`);
    return 1;
  }
  const still = missingPackages(packages);
  if (still.length > 0) {
    const list = still.map((p) => `${p.name} (${p.probes.join(', ')})`).join('; ');
    console.error(`test deps: still missing after apt-get install: ${list}`);
    return 1;
  }
  console.log(`test deps: installed ${names.join(' ')}`);
  return 0;
}

if (process.argv[1] === fileURLToPath(import.meta.url))
  process.exitCode = main(process.argv.slice(2));

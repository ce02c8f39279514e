#!/usr/bin/env node
// Runs the test suite (tap, with any arguments given) once on each Node.js major that
// matters: the oldest one package.json's `engines` allows and the one the container image
// ships (deploy/Dockerfile). SIDEPOOL_TEST_NODES picks others: majors, "current" (the
// node running this) or paths, e.g. `SIDEPOOL_TEST_NODES=current npm test` for one quick
// pass while developing. Each run has that node first on PATH, so what the tests spawn
// through PATH (`npx sidepool`, npm) runs on it too, and the sbin directories added, where
// Debian puts nginx, dnsmasq and haproxy.
import { spawn } from 'node:child_process';
import { mkdirSync, realpathSync, rmSync, symlinkSync } from 'node:fs';
import path from 'node:path';
import process from 'node:process';
import { ROOT, imageNodeMajor, nodeBinary, oldestNodeMajor, versionOf } from './node-runtime.mjs';
import { testPath } from './provision-test-deps.mjs';

function runtimes() {
  const given = process.env.SIDEPOOL_TEST_NODES?.trim();
  if (given) return given.split(/[\s,]+/).map((spec) => ({ spec, why: 'SIDEPOOL_TEST_NODES' }));
  const oldest = oldestNodeMajor();
  const image = imageNodeMajor();
  if (oldest === image)
    return [{ spec: String(image), why: 'the image’s and the oldest engines allows' }];
  return [
    { spec: String(oldest), why: 'the oldest major engines allows' },
    { spec: String(image), why: 'the major the container image ships' },
  ];
}

/** A directory holding only `node`, a link to `binary`: first on PATH for that run. */
function nodeOnPath(binary, version) {
  const dir = path.join(ROOT, 'node_modules', '.cache', 'sidepool', `path-${version}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  symlinkSync(binary, path.join(dir, 'node'));
  return dir;
}

function tap(binary, env, args) {
  const run = realpathSync(path.join(ROOT, 'node_modules', '.bin', 'tap'));
  return new Promise((resolve) => {
    const child = spawn(binary, [run, ...args], { cwd: ROOT, env, stdio: 'inherit' });
    child.on('error', (err) => {
      console.error(`tap: cannot run ${binary}: ${err.message}`);
      resolve(1);
    });
    child.on('exit', (code, signal) => resolve(code ?? (signal ? 1 : 0)));
  });
}

async function main(args) {
  const results = [];
  for (const { spec, why } of runtimes()) {
    const binary = nodeBinary(spec);
    const version = versionOf(binary);
    const env = {
      ...process.env,
      PATH: [nodeOnPath(binary, version), testPath(process.env.PATH)].join(path.delimiter),
    };
    console.log(`\n# tap on Node.js ${version} (${why}): ${binary}\n`);
    const started = Date.now();
    const code = await tap(binary, env, args);
    const seconds = Math.round((Date.now() - started) / 1000);
    results.push({ version, code, seconds });
    console.log(
      `\n# tap on Node.js ${version}: ${code === 0 ? 'passed' : `failed (exit ${code})`} in ${seconds} s`,
    );
  }
  console.log(
    `\n# suite: ${results.map((r) => `Node.js ${r.version} ${r.code === 0 ? 'passed' : 'FAILED'} (${r.seconds} s)`).join(', ')}`,
  );
  return results.every((r) => r.code === 0) ? 0 : 1;
}

process.exitCode = await main(process.argv.slice(2));

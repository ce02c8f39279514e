// The Node.js majors the suite runs on (scripts/node-runtime.mjs, used by `npm test` and
// `npm run bench -- --node N`): the oldest `engines` allows and the one the image ships.
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';

const exec = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '..');

interface Runtime {
  imageNodeMajor(): number;
  oldestNodeMajor(): number;
  nodeBinary(spec: string | number): string;
}
const runtime = (await import(path.join(ROOT, 'scripts', 'node-runtime.mjs'))) as Runtime;

void t.test('the majors: the image’s (Dockerfile) and the oldest engines allows', async (t) => {
  const dockerfile = await readFile(path.join(ROOT, 'deploy', 'Dockerfile'), 'utf8');
  t.match(dockerfile, `ARG NODE_MAJOR=${runtime.imageNodeMajor()}\n`);
  t.equal(runtime.imageNodeMajor(), 24, 'the image runs the active LTS');
  t.equal(runtime.oldestNodeMajor(), 20);
  const pkg = JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as {
    scripts: Record<string, string>;
  };
  t.match(pkg.scripts.test, /node scripts\/tap-each-node\.mjs$/, 'npm test runs tap on each');
});

void t.test('this run’s node is the one on PATH, so what the tests spawn runs on it', async (t) => {
  const { stdout } = await exec('node', ['--version']);
  t.equal(stdout.trim(), process.version);
  t.equal(runtime.nodeBinary(process.versions.node.split('.')[0] as string), process.execPath);
  t.equal(runtime.nodeBinary('current'), process.execPath);
});

// What the bench checks before it measures anything: `--out` with a directory in it once
// ran seven minutes of workload 9 and then failed to write the results; and whether dist/
// is older than src/, which it read from dist/'s newest file, though tsc leaves a file
// alone when its output does not change (a rebuild after a touch still read as stale).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import t from 'tap';

// bench/ is plain ESM JavaScript outside the typed build: name what the test uses.
const benchLib: string = '../bench/lib.mjs';
const { newestMtime } = (await import(benchLib)) as { newestMtime: (dir: string) => number };

void t.test('--out takes a file name: a path is refused at once, exit 2', (t) => {
  const run = spawnSync(process.execPath, ['bench/run.mjs', '--out', 'bench/results/x'], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  t.equal(run.status, 2);
  t.match(run.stderr, /--out expects a file name .* got bench\/results\/x/);
  t.notOk(existsSync('bench/results/bench'), 'nothing was written');
  t.end();
});

void t.test('after npm run build, dist/ is as new as src/, as the bench reads it', (t) => {
  const build = spawnSync('npm', ['run', 'build'], { encoding: 'utf8', timeout: 300_000 });
  t.equal(build.status, 0, build.stderr);
  t.ok(
    newestMtime('dist') >= newestMtime('src'),
    'the newest file of dist/ is no older than the newest of src/',
  );
  t.end();
});

// The bench's options are checked before it measures anything: `--out` with a directory in
// it once ran seven minutes of workload 9 and then failed to write the results.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import t from 'tap';

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

import t from 'tap';
import { AdjacentSlices } from '../src/net/adjacent.js';

void t.test('adjacent slices of one buffer leave as one slice of it, no copy', (t) => {
  const read = Buffer.from('T...D...C...Z...');
  const slices = new AdjacentSlices();
  for (let i = 0; i < read.length; i += 4) t.ok(slices.add(read.subarray(i, i + 4)));
  const out = slices.take() as Buffer;
  t.equal(out.toString(), 'T...D...C...Z...');
  t.equal(out.buffer, read.buffer, 'a view of the read buffer');
  t.ok(slices.isEmpty);
  t.equal(slices.take(), undefined);
  t.end();
});

void t.test('a slice that does not touch the last one is refused until take()', (t) => {
  const read = Buffer.from('aaaabbbbcccc');
  const slices = new AdjacentSlices();
  t.ok(slices.add(read.subarray(0, 4)));
  t.notOk(slices.add(read.subarray(8, 12)), 'a gap: refused');
  t.notOk(slices.add(Buffer.from('bbbb')), 'other memory: refused');
  t.equal((slices.take() as Buffer).toString(), 'aaaa', 'what was held is unchanged');
  t.ok(slices.add(read.subarray(8, 12)));
  t.equal((slices.take() as Buffer).toString(), 'cccc');
  t.end();
});

void t.test('one slice alone comes back as itself', (t) => {
  const slice = Buffer.from('whole');
  const slices = new AdjacentSlices();
  slices.add(slice);
  t.equal(slices.take(), slice);
  t.end();
});

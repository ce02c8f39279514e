import t from 'tap';
import { HeadEnds } from '../src/proxy/http/request-feed.js';

/**
 * A stream of requests, some with bodies that hold CRLFCRLF themselves, and the offsets at
 * which each request head ends (where llhttp emits the request).
 */
function stream(): { bytes: Buffer; headEnds: number[] } {
  const parts: string[] = [];
  const headEnds: number[] = [];
  let length = 0;
  const add = (head: string, body = ''): void => {
    length += head.length;
    headEnds.push(length);
    length += body.length;
    parts.push(head, body);
  };
  for (let i = 0; i < 60; i++) {
    if (i % 5 === 1)
      add(`POST /${i} HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\n\r\n`, '\r\n\r\n\r\n\r\n');
    else if (i % 5 === 3)
      add(
        `POST /${i} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n`,
        '2\r\n\r\n\r\n0\r\n\r\n',
      );
    else if (i % 7 === 0) add(`\r\nGET /${i} HTTP/1.0\r\n\r\n`);
    else add(`GET /${i} HTTP/1.1\r\nHost: a\r\n\r\n`);
  }
  return { bytes: Buffer.from(parts.join(''), 'latin1'), headEnds };
}

/** A small deterministic generator, so that a failure can be replayed. */
function random(seed: number): () => number {
  let x = seed;
  return () => {
    x = (x * 1103515245 + 12345) % 2147483648;
    return x / 2147483648;
  };
}

void t.test('a slice never completes more request heads than there is room for', (t) => {
  const { bytes, headEnds } = stream();
  for (let seed = 1; seed <= 200; seed++) {
    const next = random(seed);
    const heads = new HeadEnds();
    let fed = 0;
    let read = 0;
    let worst = '';
    while (read < bytes.length) {
      // A read of 1 to 40 bytes, fed in slices as room allows (1 to 3 heads each time).
      const end = Math.min(bytes.length, read + 1 + Math.floor(next() * 40));
      let rest = bytes.subarray(read, end);
      read = end;
      while (rest.length > 0) {
        const room = 1 + Math.floor(next() * 3);
        const cut = heads.cut(rest, room);
        if (cut <= 0) {
          worst = `seed ${seed}: no progress at ${fed}`;
          break;
        }
        const completed = headEnds.filter((e) => e > fed && e <= fed + cut).length;
        if (completed > room)
          worst = `seed ${seed}: ${completed} heads in a slice with room ${room}`;
        heads.fed(rest.subarray(0, cut));
        fed += cut;
        rest = rest.subarray(cut);
      }
      if (worst !== '') break;
    }
    if (worst !== '') {
      t.fail(worst);
      break;
    }
  }
  t.pass('200 random splittings of the stream');
  t.end();
});

void t.test('a head end split over reads byte by byte is still counted', (t) => {
  const heads = new HeadEnds();
  heads.fed(Buffer.from('GET / HTTP/1.1\r\nHost: a\r', 'latin1'));
  heads.fed(Buffer.from('\n', 'latin1'));
  heads.fed(Buffer.from('\r', 'latin1'));
  // The next byte ends the head: with room for one, the slice stops right after it.
  t.equal(heads.cut(Buffer.from('\nGET /2 HTTP/1.1\r\n\r\n', 'latin1'), 1), 1);
  t.end();
});

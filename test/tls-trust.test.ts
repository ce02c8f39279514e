import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import tls from 'node:tls';
import t from 'tap';
import YAML from 'yaml';
import { TestPki, type KeyPair, type TestCa } from './helpers/certs.js';
import { startCli } from './helpers/cli.js';
import { freePort } from './helpers/redis.js';
import { startTlsServer } from './helpers/tls-server.js';
import { roundTrip } from './helpers/util.js';
import { tempDir } from './helpers/tmp.js';

/**
 * What `tls: true` trusts, in a real sidepool process: Node's bundled roots and
 * NODE_EXTRA_CA_CERTS everywhere, and the system store (here: SSL_CERT_FILE, which is
 * where Node's system store reads on Linux) where the runtime can read it. Feature-checked:
 * each Node major runs the branch its runtime has.
 */
const SYSTEM_STORE =
  typeof (tls as { getCACertificates?: unknown }).getCACertificates === 'function';

let pki: TestPki;
let privateCa: TestCa;
let upstreamCert: KeyPair;
t.before(async () => {
  pki = await TestPki.create();
  privateCa = await pki.ca('private-ca');
  upstreamCert = await privateCa.issue('db.internal', { ips: ['127.0.0.1'] });
});
t.teardown(() => pki.remove());

async function sidepoolTo(upstream: string, env: NodeJS.ProcessEnv) {
  const dir = tempDir('sidepool-trust-');
  const path = join(dir, 'sidepool.yaml');
  const port = await freePort();
  await writeFile(
    path,
    YAML.stringify({
      admin: false,
      routes: [
        {
          name: 'db',
          listen: `127.0.0.1:${port}`,
          upstream: { address: upstream, tls: true },
          pool: { minIdle: 1 },
        },
      ],
    }),
  );
  // Only the variables under test: none inherited from the environment running the tests
  // (spawn leaves out variables whose value is undefined).
  const cli = startCli(['run', '--config', path], {
    NODE_EXTRA_CA_CERTS: undefined,
    SSL_CERT_FILE: undefined,
    SSL_CERT_DIR: undefined,
    ...env,
  });
  return { cli, port };
}

void t.test('a private CA given in NODE_EXTRA_CA_CERTS is trusted by tls: true', async (t) => {
  const upstream = await startTlsServer({ identity: upstreamCert });
  t.teardown(() => upstream.close());
  const { cli, port } = await sidepoolTo(upstream.address, {
    NODE_EXTRA_CA_CERTS: privateCa.cert,
  });
  t.teardown(() => cli.child.kill('SIGKILL'));
  await cli.waitFor((l) => l.msg === 'pool warm');
  t.equal((await roundTrip(port, 'through tls')).toString(), 'through tls');
  const trust = cli.lines.find((l) => Array.isArray(l.trust));
  t.ok((trust?.trust as string[]).includes('NODE_EXTRA_CA_CERTS'), 'the log names it');
});

void t.test(
  SYSTEM_STORE
    ? 'a private CA in the system store (SSL_CERT_FILE) is trusted by tls: true'
    : 'this Node cannot read the system store: a private CA there is not trusted, and the log says so',
  async (t) => {
    const upstream = await startTlsServer({ identity: upstreamCert });
    t.teardown(() => upstream.close());
    const { cli, port } = await sidepoolTo(upstream.address, { SSL_CERT_FILE: privateCa.cert });
    t.teardown(() => cli.child.kill('SIGKILL'));
    const outcome = await cli.waitFor((l) => l.msg === 'pool warm' || l.msg === 'dial failed');
    const trust = cli.lines.find((l) => Array.isArray(l.trust));
    if (SYSTEM_STORE) {
      t.equal(outcome.msg, 'pool warm', `the link verified: ${JSON.stringify(outcome)}`);
      t.equal((await roundTrip(port, 'system store')).toString(), 'system store');
      t.same(trust?.trust, ['bundled', 'system']);
      t.match(String(trust?.msg), /system's CA store/);
    } else {
      t.equal(outcome.msg, 'dial failed');
      t.equal(outcome.code, 'SIDEPOOL_TLS_HANDSHAKE_FAILED');
      t.equal(outcome.cause, 'UNABLE_TO_VERIFY_LEAF_SIGNATURE');
      t.same(trust?.trust, ['bundled']);
      t.match(String(trust?.msg), /cannot read the system's CA store/);
    }
  },
);

import { Writable } from 'node:stream';
import t from 'tap';
import { App, ConfigError, createLogger, parseConfig } from '../src/index.js';
import { roundTrip, startEcho } from './helpers/util.js';

void t.test('the package entry runs a proxy inside another process', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const config = parseConfig({
    admin: false,
    routes: [{ listen: '127.0.0.1:0', upstream: upstream.address }],
  });
  const quiet = new Writable({ write: (_c, _e, cb) => cb() });
  const app = new App(config, createLogger('info', quiet));
  await app.start();
  t.equal((await roundTrip(app.firstRoute.port, 'as a library')).toString(), 'as a library');
  await app.stop(100);
  t.throws(() => parseConfig({ routes: [] }), ConfigError);
});

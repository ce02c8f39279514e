import { configSchema } from '../src/config/schema.js';
const r = configSchema.safeParse({ admin: { listen: 'x', foo: 1 }, routes: [{ listen: ':0', upstream: { adress: 'a:1' }, pool: { minIdle: 'x', bogus: 1 }, idleTimeout: '5q' }, {listen: 'a:1', upstream: 5}] });
console.log(JSON.stringify(r.error?.issues, null, 1));
console.log(JSON.stringify(configSchema.parse({ admin: false, routes: [{ listen: ':0', upstream: 'a:1' }] })));

#!/usr/bin/env node
import { hideBin } from 'yargs/helpers';
import { holdSignals } from './signals.js';

// `sidepool run` takes its signals before the rest of the program loads (a second or more
// on a busy machine), so that a SIGHUP or SIGTERM during start-up is acted on, not a silent
// exit. The other commands keep Node's defaults.
const argv = hideBin(process.argv);
if (argv[0] === 'run') holdSignals();

const { main, EXIT_RUNTIME } = await import('./commands.js');
const { describe } = await import('./errors.js');
main(argv).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`sidepool: ${describe(err)}\n`);
    process.exit(EXIT_RUNTIME);
  },
);

/**
 * The factory station's command line (bundled as dist/station.mjs); see provisioning/README.md.
 *   station provision --manifest m.jsonl --out DIR --roots roots.pem … (--bridge URL --cert --key --ca | --export FILE | --inventory DIR)
 *   station import --file registrations.jsonl (--bridge URL --cert --key --ca | --inventory DIR)
 *   station <command> --help, station --version
 */
import { runStation } from './cli.js';

const code = await runStation(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr });
// Exit explicitly: nothing is left to flush (stdout/stderr are synchronous on Linux), and a stray
// handle must not keep a factory script waiting.
process.exit(code);

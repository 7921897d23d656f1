import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { DEFAULT_EK_VALIDITY, EK_VALIDITY_POLICIES, parseCertificates, type EkValidityPolicy } from '../../native/lib/ek-certificate.js';
import { parseDuration } from './duration.js';
import { StationError } from './errors.js';
import type { FleetEndpoints } from './station.js';

/**
 * Command line → validated options. Every user mistake becomes a STATION_USAGE error with a message
 * naming the flag, before anything touches a TPM or the inventory.
 */
export const USAGE = `usage:
  station provision --manifest FILE --out DIR --roots PEM [--roots PEM …] [--intermediates PEM …]
                    --enroll-url mqtts://HOST:PORT --device-url mqtts://HOST:PORT --trust-bundle PEM
                    [--base-topic fleet/v1] [--token-ttl 7d] [--parallel 1]
                    [--ek-validity ignore-expiry|strict]
                    (--export FILE | --inventory DIR)
  station import --file FILE --inventory DIR`;

export type StationCommand =
  | { readonly kind: 'help' }
  | {
      readonly kind: 'provision';
      readonly manifest: string;
      readonly out: string;
      readonly roots: readonly string[];
      readonly intermediates: readonly string[];
      /** What EK/vendor certificate validity periods count for (native/lib/ek-certificate.ts). */
      readonly ekValidity: EkValidityPolicy;
      readonly fleet: FleetEndpoints;
      readonly tokenTtlSec: number;
      readonly parallel: number;
      readonly sink: { readonly export: string } | { readonly inventory: string };
    }
  | { readonly kind: 'import'; readonly file: string; readonly inventory: string };

const URL = /^mqtts:\/\/[A-Za-z0-9.:[\]-]+:(\d{1,5})$/;
const TOPIC = /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/;
// The agent accepts at most this many trust bundle certificates (agent/src/config.ts).
const MAX_TRUST_BUNDLE = 8;

const usage = (message: string): never => {
  throw new StationError('STATION_USAGE', message);
};

export function parseCommand(argv: readonly string[]): StationCommand {
  const [command, ...rest] = argv;
  if (command === undefined || command === 'help' || command === '--help' || command === '-h') return { kind: 'help' };
  if (command === 'provision') return parseProvision(rest);
  if (command === 'import') return parseImport(rest);
  return usage(`unknown command ${JSON.stringify(command)}`);
}

function parse<O extends Record<string, { type: 'string'; multiple?: boolean; default?: string }>>(args: string[], options: O) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false }).values;
  } catch (e) {
    // parseArgs explains the mistake well; only its stack would be noise.
    return usage((e as Error).message);
  }
}

function required(value: string | undefined, flag: string): string {
  if (value === undefined || value === '') return usage(`--${flag} is required`);
  return value;
}

function parseImport(args: string[]): StationCommand {
  const v = parse(args, { file: { type: 'string' }, inventory: { type: 'string' } });
  return { kind: 'import', file: required(v.file, 'file'), inventory: required(v.inventory, 'inventory') };
}

function parseProvision(args: string[]): StationCommand {
  const v = parse(args, {
    manifest: { type: 'string' },
    out: { type: 'string' },
    roots: { type: 'string', multiple: true },
    intermediates: { type: 'string', multiple: true },
    'enroll-url': { type: 'string' },
    'device-url': { type: 'string' },
    'trust-bundle': { type: 'string' },
    'base-topic': { type: 'string', default: 'fleet/v1' },
    'token-ttl': { type: 'string', default: '7d' },
    parallel: { type: 'string', default: '1' },
    'ek-validity': { type: 'string', default: DEFAULT_EK_VALIDITY },
    export: { type: 'string' },
    inventory: { type: 'string' },
  });
  const manifest = required(v.manifest, 'manifest');
  const out = required(v.out, 'out');
  if (!v.roots?.length) usage('--roots is required (the TPM manufacturers whose EK certificates are trusted)');
  const enrollUrl = mqttsUrl(required(v['enroll-url'], 'enroll-url'), 'enroll-url');
  const deviceUrl = mqttsUrl(required(v['device-url'], 'device-url'), 'device-url');
  const baseTopic = v['base-topic']!;
  if (baseTopic.length > 128 || !TOPIC.test(baseTopic)) usage(`--base-topic: ${JSON.stringify(baseTopic)} is not a topic prefix such as fleet/v1`);
  const tokenTtlSec = parseDuration(v['token-ttl']!, '--token-ttl');
  const parallel = Number(v.parallel);
  if (!Number.isInteger(parallel) || parallel < 1 || parallel > 64) usage('--parallel: expected an integer from 1 to 64');
  const ekValidity = v['ek-validity'] as EkValidityPolicy;
  if (!EK_VALIDITY_POLICIES.includes(ekValidity)) usage(`--ek-validity: expected ${EK_VALIDITY_POLICIES.join(' or ')}, got ${JSON.stringify(ekValidity)}`);
  if ((v.export === undefined) === (v.inventory === undefined)) usage('give exactly one of --export FILE or --inventory DIR');
  const trustBundle = certificatesIn(required(v['trust-bundle'], 'trust-bundle'), 'trust-bundle');
  if (trustBundle.length > MAX_TRUST_BUNDLE) usage(`--trust-bundle: at most ${MAX_TRUST_BUNDLE} certificates`);
  return {
    kind: 'provision',
    manifest,
    out,
    roots: v.roots!.flatMap((p) => certificatesIn(p, 'roots')),
    intermediates: (v.intermediates ?? []).flatMap((p) => certificatesIn(p, 'intermediates')),
    ekValidity,
    fleet: { enrollUrl, deviceUrl, trustBundle, baseTopic },
    tokenTtlSec,
    parallel,
    sink: v.export !== undefined ? { export: required(v.export, 'export') } : { inventory: required(v.inventory, 'inventory') },
  };
}

function mqttsUrl(value: string, flag: string): string {
  const port = Number(URL.exec(value)?.[1]);
  if (!(port >= 1 && port <= 65_535)) usage(`--${flag}: expected mqtts://HOST:PORT, got ${JSON.stringify(value)}`);
  return value;
}

/** Every certificate in a PEM file, each as its own PEM string. */
function certificatesIn(path: string, flag: string): string[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    return usage(`--${flag}: cannot read ${path}: ${(e as Error).message}`);
  }
  let certs;
  try {
    certs = parseCertificates([text]);
  } catch (e) {
    return usage(`--${flag}: ${path} holds a malformed certificate: ${(e as Error).message}`);
  }
  if (certs.length === 0) usage(`--${flag}: ${path} holds no PEM certificate`);
  return certs.map((c) => c.toString());
}

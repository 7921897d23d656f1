import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { EmbeddedFleet } from '../../broker-bridge/src/embedded-fleet.js';
import type { StationIo } from '../../provisioning/src/cli.js';

/** What tests of the station CLI (runStation) share: captured output, and station credentials in files. */

/** A StationIo whose stdout and stderr are collected in `out`. */
export function captureIo(over: Partial<StationIo> = {}): { out: { stdout: string; stderr: string }; io: StationIo } {
  const out = { stdout: '', stderr: '' };
  return { out, io: { stdout: { write: (s: string) => (out.stdout += s) }, stderr: { write: (s: string) => (out.stderr += s) }, ...over } };
}

/**
 * Writes, in `dir`, each station's role:station:<id> certificate and key from the fleet CA, the fleet
 * root (root.pem) and the trust bundle (bundle.pem). Returns the certificate and key paths by id.
 */
export async function writeStationFiles<Id extends string>(fleet: EmbeddedFleet, dir: string, ids: readonly Id[]): Promise<Record<Id, { cert: string; key: string }>> {
  const file = (name: string, text: string) => {
    writeFileSync(join(dir, name), text);
    return join(dir, name);
  };
  const out = {} as Record<Id, { cert: string; key: string }>;
  for (const id of ids) {
    const c = await fleet.clientCertificate(`role:station:${id}`);
    out[id] = { cert: file(`${id}.crt`, c.certPem), key: file(`${id}.key`, c.keyPem!) };
  }
  file('root.pem', fleet.ca.rootCertificatePem);
  file('bundle.pem', fleet.trustBundle.join(''));
  return out;
}

/**
 * `station provision` arguments for `devices` (written as the manifest `<name>.jsonl`, each with
 * metadata { model }) into out dir `<name>`, trusting vendors.pem/vendor-int.pem, with the fleet's
 * URLs and bundle.pem, then `extra` (the registration target).
 */
export function provisionArgs(fleet: EmbeddedFleet, dir: string, name: string, devices: readonly object[], model: string, extra: readonly string[]): string[] {
  const manifest = join(dir, `${name}.jsonl`);
  writeFileSync(manifest, devices.map((d) => JSON.stringify({ ...d, metadata: { model } })).join('\n'));
  return [
    'provision',
    '--manifest', manifest,
    '--out', join(dir, name),
    '--roots', join(dir, 'vendors.pem'),
    '--intermediates', join(dir, 'vendor-int.pem'),
    '--enroll-url', fleet.broker.enrollUrl,
    '--device-url', fleet.broker.deviceUrl,
    '--trust-bundle', join(dir, 'bundle.pem'),
    ...extra,
  ];
}

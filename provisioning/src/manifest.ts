import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parseCertificates } from '../../native/lib/ek-certificate.js';
import { object, optional, parseMessage, str, type Infer } from '../../common/protocol/schema.js';
import { DEVICE_ID_PATTERN } from '../../common/protocol/topics.js';
import { StationError, toStationError } from './errors.js';
import { metadataSchema } from './metadata.js';

/**
 * The line manifest: JSON lines `{ "deviceId", "tcti", "metadata": { … }, "ekCertificateFile"? }`
 * (the EK certificate a vendor serves online for a TPM without one in NV; PEM or DER, a path relative
 * to the manifest, read and checked here). The whole manifest is
 * validated before any TPM is touched, and every bad line is reported with its number, so a typo
 * stops the batch at once instead of half-way through the line.
 */
const manifestLine = object({
  deviceId: str({ max: 64, pattern: DEVICE_ID_PATTERN }),
  tcti: str({ min: 1, max: 256 }),
  metadata: optional(metadataSchema),
  ekCertificateFile: optional(str({ min: 1, max: 512 })),
});

export interface ManifestEntry {
  readonly deviceId: string;
  readonly tcti: string;
  readonly metadata: Readonly<Record<string, string>>;
  /** DER of the line's ekCertificateFile. */
  readonly ekCertificate?: Buffer;
  /** 1-based line number in the manifest file. */
  readonly line: number;
}

const MAX_LINE_BYTES = 8192;
const MAX_REPORTED = 20;

export function readManifest(path: string): ManifestEntry[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw toStationError(e, `cannot read manifest ${path}`);
  }
  return parseManifest(text, path, dirname(path));
}

/** `baseDir`: where ekCertificateFile paths are relative to (default: the working directory). */
export function parseManifest(text: string, name: string, baseDir = '.'): ManifestEntry[] {
  const entries: ManifestEntry[] = [];
  const problems: { line: number; reason: string }[] = [];
  const ids = new Map<string, number>();
  const tctis = new Map<string, number>();
  text
    .replace(/^\uFEFF/, '')
    .split(/\r?\n/)
    .forEach((raw, i) => {
      const line = i + 1;
      if (!raw.trim()) return;
      let parsed: Infer<typeof manifestLine>;
      try {
        parsed = parseMessage(raw, manifestLine, MAX_LINE_BYTES);
      } catch (e) {
        problems.push({ line, reason: (e as Error).message });
        return;
      }
      const sameId = ids.get(parsed.deviceId);
      // One TPM is one device: a second id on the same TPM would share its EK.
      const sameTpm = tctis.get(parsed.tcti);
      if (sameId !== undefined) problems.push({ line, reason: `deviceId ${parsed.deviceId} already on line ${sameId}` });
      else if (sameTpm !== undefined) problems.push({ line, reason: `tcti ${parsed.tcti} already on line ${sameTpm}` });
      else {
        let ekCertificate: Buffer | undefined;
        if (parsed.ekCertificateFile !== undefined) {
          try {
            ekCertificate = readEkCertificateFile(resolve(baseDir, parsed.ekCertificateFile));
          } catch (e) {
            problems.push({ line, reason: `ekCertificateFile ${parsed.ekCertificateFile}: ${(e as Error).message}` });
            return;
          }
        }
        ids.set(parsed.deviceId, line);
        tctis.set(parsed.tcti, line);
        entries.push({ deviceId: parsed.deviceId, tcti: parsed.tcti, metadata: parsed.metadata ?? {}, ...(ekCertificate ? { ekCertificate } : {}), line });
      }
    });
  if (problems.length > 0) {
    const shown = problems.slice(0, MAX_REPORTED).map((p) => `${name}:${p.line}: ${p.reason}`);
    if (problems.length > MAX_REPORTED) shown.push(`… and ${problems.length - MAX_REPORTED} more`);
    throw new StationError('STATION_MANIFEST_INVALID', `invalid manifest:\n${shown.join('\n')}`, { details: { lines: problems.map((p) => p.line) } });
  }
  if (entries.length === 0) throw new StationError('STATION_MANIFEST_INVALID', `${name}: the manifest lists no device`);
  return entries;
}

/** One certificate, PEM or DER, readable as the EK verifier reads certificates. */
function readEkCertificateFile(path: string): Buffer {
  const certs = parseCertificates([readFileSync(path)]);
  if (certs.length !== 1) throw new Error(`expected one certificate, found ${certs.length}`);
  return certs[0]!.der;
}

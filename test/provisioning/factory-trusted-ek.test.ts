import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { createHash, createPublicKey } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { systemClock } from '../../common/clock.js';
import { EmbeddedFleet } from '../../broker-bridge/src/embedded-fleet.js';
import { Agent } from '../../agent/src/agent.js';
import { parseBootstrap } from '../../agent/src/config.js';
import { runStation } from '../../provisioning/src/cli.js';
import { captureIo, provisionArgs, writeStationFiles } from './station-kit.js';
import { eventually, TEST_AGENT_CONFIG } from '../agent/fleet-fixture.js';
import { newManufacturer, startTpm, type TestTpm } from '../harness/index.js';

const run = promisify(execFile);
/** swtpm 0.7's EK certificate indices: ECC P-384 (high range) and RSA-2048. */
const EK_CERT_INDICES = ['0x01c00016', '0x01c00002'];

/**
 * TPMs without an EK certificate in NV (many Intel PTT and AMD fTPM parts), on the real station, bridge,
 * mosquitto and swtpm, the certificates removed with tpm2-tools as a board without them would come:
 * - the factory-trusted EK policy: off by default (STATION_EK_MISSING); with --factory-trusted-ek the
 *   EK public key is recorded and audited, and the bridge accepts it only from the stations it names;
 *   the agent enrolls with no certificate. A TPM whose certificate is refused is never downgraded to it.
 * - a certificate supplied per device (the vendor serves it online): verified like one read from NV,
 *   and the bridge judges the certificate-less agent by it.
 */
describe('devices without an EK certificate: the factory-trusted EK policy and supplied certificates', () => {
  let dir: string;
  let fleet: EmbeddedFleet;
  let bare: TestTpm;
  let bare2: TestTpm;
  let supplied: TestTpm;
  let rogue: TestTpm;
  let suppliedCertPath: string;
  const agents: Agent[] = [];
  const file = (name: string, text: string | Buffer) => {
    writeFileSync(join(dir, name), text);
    return join(dir, name);
  };
  const station = { line1: { cert: '', key: '' }, line2: { cert: '', key: '' } };
  const tpm2 = async (tpm: TestTpm, tool: string, ...args: string[]) => (await run(tool, ['-T', tpm.tcti, ...args], { cwd: dir, timeout: 20_000 })).stdout;
  /** Takes the EK certificates out of NV, as a platform would leave a chip without them. */
  const removeEkCertificates = async (tpm: TestTpm) => {
    for (const index of EK_CERT_INDICES) await tpm2(tpm, 'tpm2_nvundefine', '-C', 'p', index);
    const listed = await tpm2(tpm, 'tpm2_getcap', 'handles-nv-index');
    for (const index of EK_CERT_INDICES) expect(listed.toLowerCase()).not.toContain(index.slice(2));
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'factory-ek-'));
    [bare, bare2, supplied, rogue] = await Promise.all([startTpm(), startTpm(), startTpm(), startTpm({ manufacturer: newManufacturer() })]);
    // The supplied certificate: the one the vendor made for this TPM's low-range (L-1 RSA-2048) EK, as
    // vendors serve them online, kept in a file before NV is cleared.
    await tpm2(supplied, 'tpm2_nvread', '0x01c00002', '-C', 'o', '-o', join(dir, 'supplied-ek.der'));
    suppliedCertPath = join(dir, 'supplied-ek.der');
    await Promise.all([removeEkCertificates(bare), removeEkCertificates(bare2), removeEkCertificates(supplied)]);
    fleet = await EmbeddedFleet.start({
      dir: join(dir, 'fleet'),
      clock: systemClock,
      trustDomain: 'test.fleet',
      ekTrust: { roots: [bare.manufacturerRootPem], intermediates: [bare.manufacturerIntermediatePem] },
      stationIdentities: ['role:station:line1', 'role:station:line2'],
      factoryTrustedEkStations: ['line1'],
    });
    Object.assign(station, await writeStationFiles(fleet, dir, ['line1', 'line2'] as const));
    file('vendors.pem', bare.manufacturerRootPem + rogue.manufacturerRootPem);
    file('vendor-int.pem', bare.manufacturerIntermediatePem + rogue.manufacturerIntermediatePem);
  }, 120_000);

  afterAll(async () => {
    await Promise.all(agents.map((a) => a.stop()));
    await fleet?.stop();
    await Promise.all([bare, bare2, supplied, rogue].map((t) => t?.stop()));
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const io = captureIo;
  const provision = async (name: string, devices: object[], extra: string[], who: 'line1' | 'line2' = 'line1') => {
    const p = io();
    const bridge = ['--bridge', fleet.broker.deviceUrl, '--cert', station[who].cert, '--key', station[who].key, '--ca', join(dir, 'root.pem')];
    const code = await runStation(provisionArgs(fleet, dir, name, devices, 'fw-tpm', [...bridge, ...extra]), p.io);
    const auditPath = join(dir, name, 'audit.jsonl');
    const audit = existsSync(auditPath) ? readFileSync(auditPath, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>) : [];
    return { code, ...p.out, audit, bootstrapPath: (id: string) => join(dir, name, 'devices', `${id}.json`) };
  };
  const enrollAgent = async (bootstrapPath: string, dataDir: string) => {
    const agent = new Agent({ bootstrap: parseBootstrap(JSON.parse(readFileSync(bootstrapPath, 'utf8'))), dataDir: join(dir, dataDir), config: TEST_AGENT_CONFIG, responseTimeoutMs: 5_000 });
    agents.push(agent);
    await agent.start();
    await eventually(() => agent.state === 'online', 30_000, `${dataDir} online`);
    return agent;
  };

  it('is off by default: a TPM without an EK certificate is refused STATION_EK_MISSING, nothing registered or written', async () => {
    const r = await provision('default', [{ deviceId: 'fw-default', tcti: bare.tcti }], []);
    expect(r.code).toBe(1);
    expect(r.audit).toEqual([expect.objectContaining({ deviceId: 'fw-default', result: 'refused', code: 'STATION_EK_MISSING' })]);
    expect(existsSync(r.bootstrapPath('fw-default'))).toBe(false);
    expect(fleet.inventory.getDevice('fw-default')).toBeUndefined();
  });

  it('with --factory-trusted-ek from a station the bridge names: the EK public key is registered and audited, and the agent enrolls without a certificate', async () => {
    const r = await provision('factory', [{ deviceId: 'fw-1', tcti: bare.tcti }], ['--factory-trusted-ek']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.audit).toEqual([expect.objectContaining({ deviceId: 'fw-1', result: 'provisioned', ekTrust: 'factory' })]);
    const device = fleet.inventory.getDevice('fw-1')!;
    expect(device).toMatchObject({ ekTrust: 'factory', ekTrustedBy: 'line1', ekKind: 'ecc' });
    expect(device.ekCertificate).toBeUndefined();
    const spki = Buffer.from(device.ekPublic!, 'base64');
    expect(createHash('sha256').update(spki).digest('hex')).toBe(device.ekPublicHash);
    // The key recorded is the TPM's TCG default (L-2) ECC EK, as tpm2-tools derives it.
    await tpm2(bare, 'tpm2_createek', '-c', 'fw1-ek.ctx', '-G', 'ecc', '-u', 'fw1-ek.pem', '-f', 'pem');
    await tpm2(bare, 'tpm2_flushcontext', '-t');
    expect(createPublicKey(readFileSync(join(dir, 'fw1-ek.pem'))).export({ type: 'spki', format: 'der' }).equals(spki)).toBe(true);
    const boot = JSON.parse(readFileSync(r.bootstrapPath('fw-1'), 'utf8')) as Record<string, unknown>;
    expect(boot).toMatchObject({ ekKind: 'ecc', ekTrust: 'factory' });

    const agent = await enrollAgent(r.bootstrapPath('fw-1'), 'agent-fw-1');
    expect(agent.status().ek).toBeUndefined();
    await eventually(() => fleet.inventory.getDevice('fw-1')?.status?.tpmEk === 'L-2 ECC P-256 factory-trusted', 10_000, 'the EK in the ingested status');
    expect(fleet.inventory.getDevice('fw-1')?.enrolledAt).toBeDefined();
    const enrolled = (await fleet.inventory.listAudit({ deviceId: 'fw-1' })).find((e) => e.type === 'enrollment.accepted');
    expect(enrolled?.details).toMatchObject({ manufacturer: 'factory-trusted EK (station line1)' });
    await agent.stop();
  }, 90_000);

  it('from a station the bridge does not name, the same device is refused by the bridge (STATION_EK_UNTRUSTED), nothing written', async () => {
    const r = await provision('line2', [{ deviceId: 'fw-2', tcti: bare2.tcti }], ['--factory-trusted-ek'], 'line2');
    expect(r.code).toBe(1);
    expect(r.audit).toEqual([expect.objectContaining({ deviceId: 'fw-2', result: 'refused', code: 'STATION_EK_UNTRUSTED' })]);
    expect(String(r.audit[0]!.message)).toMatch(/station line2 may not register factory-trusted EKs/);
    expect(existsSync(r.bootstrapPath('fw-2'))).toBe(false);
    expect(fleet.inventory.getDevice('fw-2')).toBeUndefined();
  });

  it('offline: the export line carries the recorded EK (no token); station import through the bridge registers it for the importing station', async () => {
    const exportFile = join(dir, 'offline.jsonl');
    const p = io();
    const code = await runStation(
      [
        'provision',
        '--manifest', file('offline-manifest.jsonl', JSON.stringify({ deviceId: 'fw-offline', tcti: bare2.tcti })),
        '--out', join(dir, 'offline'),
        '--roots', join(dir, 'vendors.pem'),
        '--enroll-url', fleet.broker.enrollUrl,
        '--device-url', fleet.broker.deviceUrl,
        '--trust-bundle', join(dir, 'bundle.pem'),
        '--factory-trusted-ek',
        '--export', exportFile,
      ],
      p.io,
    );
    expect(code, p.out.stderr).toBe(0);
    const line = JSON.parse(readFileSync(exportFile, 'utf8').trim()) as { device: Record<string, unknown> };
    expect(line.device).toMatchObject({ deviceId: 'fw-offline', ekTrust: 'factory', ekTrustedBy: expect.stringMatching(/^station@/) });
    expect(line.device.ekCertificate).toBeUndefined();
    const boot = JSON.parse(readFileSync(join(dir, 'offline', 'devices', 'fw-offline.json'), 'utf8')) as { token: string };
    expect(readFileSync(exportFile, 'utf8')).not.toContain(boot.token);
    const imp = io();
    expect(await runStation(['import', '--file', exportFile, '--bridge', fleet.broker.deviceUrl, '--cert', station.line1.cert, '--key', station.line1.key, '--ca', join(dir, 'root.pem')], imp.io), imp.out.stderr).toBe(0);
    expect(fleet.inventory.getDevice('fw-offline')).toMatchObject({ ekTrust: 'factory', ekTrustedBy: 'line1', ekPublic: line.device.ekPublic });
  });

  it('never downgrades a refused certificate: a TPM whose EK certificate is untrusted stays refused under the policy', async () => {
    const fleetOnly = file('fleet-vendor.pem', bare.manufacturerRootPem);
    const r = await provision('rogue', [{ deviceId: 'fw-rogue', tcti: rogue.tcti }], ['--factory-trusted-ek', '--roots', fleetOnly]);
    expect(r.code).toBe(1);
    expect(r.audit).toEqual([expect.objectContaining({ deviceId: 'fw-rogue', result: 'refused', code: 'STATION_EK_UNTRUSTED' })]);
    expect(fleet.inventory.getDevice('fw-rogue')).toBeUndefined();
  });

  it('a certificate supplied per device (ekCertificateFile) registers the TPM with it; the agent enrolls with none in NV, judged by it', async () => {
    const r = await provision('supplied', [{ deviceId: 'fw-cert', tcti: supplied.tcti, ekCertificateFile: suppliedCertPath }], []);
    expect(r.code, r.stderr).toBe(0);
    const device = fleet.inventory.getDevice('fw-cert')!;
    expect(Buffer.from(device.ekCertificate!, 'base64').equals(readFileSync(suppliedCertPath))).toBe(true);
    expect(device.ekTrust).toBeUndefined();
    const agent = await enrollAgent(r.bootstrapPath('fw-cert'), 'agent-fw-cert');
    expect(device.ekKind).toBe('rsa');
    await eventually(() => fleet.inventory.getDevice('fw-cert')?.status?.tpmEk === 'L-1 RSA-2048 no NV certificate', 10_000, 'the EK in the ingested status');
    expect(fleet.inventory.getDevice('fw-cert')?.enrolledAt).toBeDefined();
    await agent.stop();
    // Another TPM's certificate in the file is refused: the EK this TPM derives is not the certified key.
    const wrong = await provision('supplied-wrong', [{ deviceId: 'fw-wrong', tcti: bare2.tcti, ekCertificateFile: suppliedCertPath }], []);
    expect(wrong.audit).toEqual([expect.objectContaining({ deviceId: 'fw-wrong', result: 'refused', code: 'STATION_EK_MISMATCH' })]);
  }, 90_000);
});

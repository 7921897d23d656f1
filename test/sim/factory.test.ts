import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../common/clock.js';
import { EmbeddedFleet } from '../../broker-bridge/src/embedded-fleet.js';
import { Agent } from '../../agent/src/agent.js';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import { provisionDevice, type Provisioned, type StationPolicy } from '../../provisioning/src/station.js';
import { TpmFactory, type ManufacturedTpm } from '../../sim/src/factory.js';
import { TEST_AGENT_CONFIG } from '../agent/fleet-fixture.js';

/**
 * TPMs from the simulator's factory go through the real pipeline: the factory station proves the EK
 * and registers the device, a real agent enrolls over mosquitto with the bridge and the CA, and comes
 * online with a TPM-resident key. A TPM from another factory is refused by the station
 * (STATION_EK_UNTRUSTED) and, registered anyway, by the bridge (EK_UNTRUSTED).
 */
describe('factory-made TPMs through station, bridge and agent (real swtpm, mosquitto)', () => {
  let dir: string;
  let factory: TpmFactory;
  let foreign: TpmFactory;
  let fleet: EmbeddedFleet;
  let policy: StationPolicy;
  const tpms: ManufacturedTpm[] = [];
  const agents: Agent[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sim-factory-'));
    [factory, foreign] = await Promise.all([TpmFactory.create(), TpmFactory.create({ name: 'Foreign Vendor' })]);
    tpms.push(...(await factory.manufactureMany(2, (i) => join(dir, 'tpm', String(i)))));
    tpms.push(await foreign.manufacture(join(dir, 'tpm', 'foreign')));
    fleet = await EmbeddedFleet.start({ dir: join(dir, 'fleet'), clock: systemClock, trustDomain: 'sim.test', ekTrust: factory.ekTrust() });
    policy = {
      manufacturers: factory.ekTrust(),
      fleet: { enrollUrl: fleet.broker.enrollUrl, deviceUrl: fleet.broker.deviceUrl, trustBundle: fleet.trustBundle, baseTopic: 'fleet/v1' },
      clock: systemClock,
      tokenTtlSec: 3600,
    };
  });
  afterAll(async () => {
    await Promise.all(agents.map((a) => a.stop().catch(() => undefined)));
    await fleet?.stop();
    await Promise.all(tpms.map((t) => t.tpm.stop()));
    rmSync(dir, { recursive: true, force: true });
  });

  async function stationProvision(deviceId: string, m: ManufacturedTpm, p: StationPolicy = policy): Promise<Provisioned> {
    const tpm = await NativeTpm.open(m.tpm.tcti);
    try {
      return await provisionDevice(tpm, { deviceId, tcti: m.tpm.tcti, metadata: { model: 'sim' } }, p);
    } finally {
      await tpm.close();
    }
  }

  const agent = (p: Pick<Provisioned, 'bootstrap'>, deviceId: string) => {
    const a = new Agent({ bootstrap: { ...p.bootstrap, trustBundle: [...p.bootstrap.trustBundle] }, dataDir: join(dir, 'devices', deviceId), config: TEST_AGENT_CONFIG, responseTimeoutMs: 5_000 });
    agents.push(a);
    return a;
  };

  it('the station registers each factory TPM by its EK, and its agent enrolls and comes online', async () => {
    for (const [i, m] of tpms.slice(0, 2).entries()) {
      const deviceId = `fab-${i}`;
      const p = await stationProvision(deviceId, m);
      expect(p.device).toMatchObject({ ekKind: 'ecc', ekPublicHash: m.ekPublicHash, ekCertificate: m.ekCertificateDer.toString('base64') });
      await fleet.inventory.registerDevice(p.device, p.token);
      const a = agent(p, deviceId);
      await a.start();
      expect(a.status()).toMatchObject({ state: 'online', online: true });
      expect(fleet.inventory.listCertificates(deviceId)).toHaveLength(1);
    }
  });

  it('a TPM from another factory: the station refuses it (STATION_EK_UNTRUSTED); registered anyway, the bridge refuses its enrollment (EK_UNTRUSTED)', async () => {
    const rogue = tpms[2]!;
    await expect(stationProvision('rogue', rogue)).rejects.toMatchObject({ code: 'STATION_EK_UNTRUSTED', details: { cause: 'EK_UNTRUSTED' } });
    // A station that trusts the foreign vendor registers it; the fleet does not trust that vendor.
    const p = await stationProvision('rogue', rogue, { ...policy, manufacturers: foreign.ekTrust() });
    await fleet.inventory.registerDevice(p.device, p.token);
    const a = agent(p, 'rogue');
    await expect(a.start()).rejects.toMatchObject({ code: 'AGENT_ENROLLMENT_REJECTED', rejection: 'EK_UNTRUSTED' });
    expect(a.status().error).toMatchObject({ rejection: 'EK_UNTRUSTED' });
    expect(fleet.inventory.listCertificates('rogue')).toHaveLength(0);
  });
});

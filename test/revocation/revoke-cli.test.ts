import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { webcrypto } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../common/clock.js';
import { pemBlocks } from '../../common/der.js';
import { generateMosquittoConfig } from '../../broker-bridge/src/broker/mosquitto-config.js';
import { createCa } from '../../broker-bridge/src/ca/ca-setup.js';
import { LevelInventory } from '../../broker-bridge/src/inventory/level-inventory.js';
import { recordEnrolledDevice } from '../../broker-bridge/src/inventory/test-records.js';
import { runProgram } from '../harness/cli.js';

x509.cryptoProvider.set(webcrypto as ReturnType<typeof x509.cryptoProvider.get>);

/** `bridge revoke` (the shipped bundle, dist/bridge.mjs) with the bridge stopped, and with its inventory locked. */
describe('bridge revoke (offline)', () => {
  let dir: string;
  let config: string;
  const aclFile = () => join(dir, 'device.acl');
  const crlFile = () => join(dir, 'crl.pem');

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'revoke-cli-'));
    const ca = await createCa({
      outDir: join(dir, 'ca'),
      clock: systemClock,
      trustDomain: 'test.fleet',
      root: { commonName: 'R' },
      issuing: { commonName: 'I' },
      backend: { kind: 'file', keyPath: join(dir, 'ca', 'issuing-key.pem') },
    });
    await ca.backend.close();
    const inv = new LevelInventory(join(dir, 'data', 'inventory'));
    await inv.open();
    const now = Date.now();
    for (const [id, serial] of [['gw-1', '4a01'], ['gw-2', '4a02']] as const) await recordEnrolledDevice(inv, { deviceId: id, serial, at: now });
    await inv.close();
    const { deviceAcl } = generateMosquittoConfig({
      baseTopic: 'fleet/v1',
      enrollListener: { host: '127.0.0.1', port: 1 },
      deviceListener: { host: '127.0.0.1', port: 2 },
      tls: { serverCertFile: '/s', serverKeyFile: '/k', clientCaFile: '/c' },
      enrollAclFile: '/e',
      deviceAclFile: aclFile(),
      persistenceDir: '/p',
      crlFile: crlFile(),
    });
    writeFileSync(aclFile(), deviceAcl);
    config = join(dir, 'bridge.json');
    writeFileSync(
      config,
      JSON.stringify({
        dataDir: join(dir, 'data'),
        trustDomain: 'test.fleet',
        brokerUrl: 'mqtts://127.0.0.1:1',
        bridgeCert: '/nonexistent',
        bridgeKey: '/nonexistent',
        caDir: join(dir, 'ca'),
        manufacturerRoots: ['/nonexistent'],
        // No pidFile here: no broker runs in this test (the live SIGHUP path is test/revocation/broker-revocation).
        broker: { crlFile: crlFile(), deviceAclFile: aclFile() },
      }),
    );
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const bridge = (args: string[]) => runProgram('bridge', args);

  it('revokes a device: inventory, CRL file with the serial and reason, ACL deny entry', async () => {
    const r = await bridge(['revoke', '--config', config, '--device', 'gw-1', '--reason', 'keyCompromise', '--json']);
    expect(r.code, r.err).toBe(0);
    expect(JSON.parse(r.out)).toMatchObject({ serials: ['4a01'], crlNumber: expect.stringMatching(/^\d+$/) as unknown as string });
    const crl = new x509.X509Crl(pemBlocks(readFileSync(crlFile(), 'utf8'), 'X509 CRL')[0]!);
    expect(crl.entries.map((e) => [e.serialNumber, e.reason])).toEqual([['4a01', x509.X509CrlReason.keyCompromise]]);
    expect(readFileSync(aclFile(), 'utf8')).toContain('user gw-1\ntopic deny #\n');
    expect(readFileSync(aclFile(), 'utf8')).not.toContain('user gw-2\n');
    const inv = new LevelInventory(join(dir, 'data', 'inventory'));
    await inv.open();
    try {
      expect(inv.getDevice('gw-1')?.revocationReason).toBe('keyCompromise');
      expect(inv.getDevice('gw-2')?.revokedAt).toBeUndefined();
    } finally {
      await inv.close();
    }
  });

  it('refuses bad input with a one-line coded error', async () => {
    const unknown = await bridge(['revoke', '--config', config, '--device', 'gw-none', '--reason', 'superseded']);
    expect(unknown.code).toBe(2);
    expect(unknown.err.trim()).toMatch(/^bridge: REVOCATION_NOT_FOUND: /);
    const reason = await bridge(['revoke', '--config', config, '--device', 'gw-2', '--reason', 'because']);
    expect(reason.code).toBe(2);
    expect(reason.err.trim()).toMatch(/^bridge: REVOCATION_BAD_REQUEST: /);
  });

  it('fails with REVOCATION_BRIDGE_RUNNING while another process holds the inventory', async () => {
    const inv = new LevelInventory(join(dir, 'data', 'inventory'));
    await inv.open();
    try {
      const r = await bridge(['revoke', '--config', config, '--device', 'gw-2', '--reason', 'superseded']);
      expect(r.code).toBe(3);
      expect(r.err.trim()).toMatch(/^bridge: REVOCATION_BRIDGE_RUNNING: /);
      expect(inv.getDevice('gw-2')?.revokedAt).toBeUndefined();
    } finally {
      await inv.close();
    }
  });
});

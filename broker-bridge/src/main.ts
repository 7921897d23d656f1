/**
 * broker-bridge CLI. Entry flow: `run` → Bridge.start() → per message EnrollmentService / RotationService
 * / IngestService.handle().
 *   bridge ca init   --dir DIR --trust-domain TD [--pkcs11-module SO --pkcs11-token LABEL --pkcs11-pin-env VAR]
 *   bridge ca import --dir DIR --trust-domain TD --root PEM --issuing PEM --issuing-key PEM
 *   bridge broker-config --out DIR --host H --enroll-port P --device-port P --server-cert F --server-key F
 *                        --client-ca F --persistence-dir DIR [--base-topic fleet/v1] [--station ID]... [--operator ID]...
 *   bridge run --config bridge.json
 *   bridge revoke --config bridge.json (--device ID | --serial HEX) --reason R
 *     Offline: needs the inventory, so only while `bridge run` is stopped (LevelDB allows one process;
 *     with the bridge running it fails with REVOCATION_BRIDGE_RUNNING: use the operator MQTT command
 *     `<base>/operators/<id>/commands/revoke` instead). Signs the new CRL, writes the broker's CRL and
 *     ACL files and signals mosquitto (`broker` in bridge.json); the next `bridge run` publishes the CRL.
 * Logs JSON lines to stdout.
 */
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { systemClock } from '../../common/clock.js';
import { Topics } from '../../common/protocol/topics.js';
import { array, int, object, oneOf, optional, parseMessage, str } from '../../common/protocol/schema.js';
import { MqttTransport } from '../../common/transport/mqtt-transport.js';
import { BRIDGE_SESSION, Bridge, DEFAULT_BRIDGE_CLIENT_ID } from './bridge.js';
import { generateMosquittoConfig } from './broker/mosquitto-config.js';
import { createCa, importCa, openBackend, type BackendSpec } from './ca/ca-setup.js';
import { CertificateIssuer } from './ca/issuer.js';
import { EnrollmentService } from './enrollment/enrollment-service.js';
import { DefaultEnrollmentPolicy } from './enrollment/policy.js';
import { RateLimiter } from './enrollment/rate-limiter.js';
import { LevelInventory } from './inventory/level-inventory.js';
import { CrlSigner } from './ca/crl.js';
import { FileBrokerEnforcement } from './revocation/broker-enforcement.js';
import { OperatorRevokeHandler } from './revocation/operator-handler.js';
import { RevocationService } from './revocation/revocation-service.js';
import { RotationService } from './rotation/rotation-service.js';
import { IngestService } from './telemetry/ingest-service.js';

const logger = pino({ base: { program: 'broker-bridge' } });

function fail(msg: string): never {
  process.stderr.write(`bridge: ${msg}\n`);
  process.exit(2);
}

const configSchema = object({
  dataDir: str({ max: 512 }),
  trustDomain: str({ max: 253 }),
  baseTopic: optional(str({ max: 128 })),
  brokerUrl: str({ max: 256, pattern: /^mqtts:\/\// }),
  /** PEM files: the bridge's role:bridge client certificate and key, the CA files from `ca init`. */
  bridgeCert: str({ max: 512 }),
  bridgeKey: str({ max: 512 }),
  caDir: str({ max: 512 }),
  issuingKey: optional(str({ max: 512 })),
  pkcs11: optional(object({ module: str({ max: 512 }), tokenLabel: str({ max: 64 }), pinEnv: str({ max: 64 }), keyLabel: optional(str({ max: 64 })) })),
  manufacturerRoots: array(str({ max: 512 }), { min: 1, max: 64 }),
  /** TPM vendors' intermediate CA files (PEM): path elements, never trust anchors. */
  manufacturerIntermediates: optional(array(str({ max: 512 }), { max: 256 })),
  /** 'ignore-expiry' (default) or 'strict' (see native/lib/ek-certificate.ts). */
  ekValidity: optional(oneOf(['ignore-expiry', 'strict'] as const)),
  certificateLifetimeSec: optional(int({ min: 3600, max: 366 * 86_400 })),
  sharedGroup: optional(str({ max: 64, pattern: /^[A-Za-z0-9_-]+$/ })),
  /** MQTT client id of the bridge's persistent session; stable across restarts. Default `role:bridge`. */
  /** Must start with `enr-` (the broker renames it to the certificate CN). */
  clientId: optional(str({ max: 64, pattern: /^enr-[A-Za-z0-9._-]+$/ })),
  /**
   * The broker's files on this host, for revocation: `crlFile` and `deviceAclFile` as in the generated
   * mosquitto.conf (`broker-config --crl-file`), `pidFile` where mosquitto's pid is (mosquitto.conf
   * `pid_file`, or the service manager's): the bridge rewrites both files and sends SIGHUP. Without
   * it the CRL is still signed and published, but the broker does not enforce it.
   */
  broker: optional(object({ crlFile: str({ max: 512 }), deviceAclFile: str({ max: 512 }), pidFile: optional(str({ max: 512 })) })),
  /** CRL nextUpdate − thisUpdate (default 24 h); a new CRL is signed when a quarter of it is left. */
  crlNextUpdateSec: optional(int({ min: 300, max: 30 * 86_400 })),
});

function revocationService(cfg: ReturnType<typeof configSchema.parse>, backend: Awaited<ReturnType<typeof openBackend>>, inventory: LevelInventory, publish?: (p: Buffer) => Promise<void>): RevocationService {
  return new RevocationService({
    inventory,
    crlSigner: new CrlSigner({ backend, issuingCertificate: readFileSync(join(cfg.caDir, 'issuing.pem')), clock: systemClock }),
    clock: systemClock,
    stateFile: join(cfg.dataDir, 'crl-state.json'),
    ...(cfg.broker ? { enforcement: new FileBrokerEnforcement({ crlFile: cfg.broker.crlFile, deviceAclFile: cfg.broker.deviceAclFile, ...(cfg.broker.pidFile ? { pidFile: cfg.broker.pidFile } : {}) }) } : {}),
    ...(publish ? { publish } : {}),
    ...(cfg.crlNextUpdateSec ? { nextUpdateSec: cfg.crlNextUpdateSec } : {}),
    logger,
  });
}

function backendSpec(dir: string, o: { issuingKey?: string; pkcs11?: { module: string; tokenLabel: string; pinEnv: string; keyLabel?: string } }): BackendSpec {
  if (o.pkcs11) {
    const pin = process.env[o.pkcs11.pinEnv] ?? fail(`environment variable ${o.pkcs11.pinEnv} (PKCS#11 PIN) is not set`);
    return { kind: 'pkcs11', modulePath: o.pkcs11.module, tokenLabel: o.pkcs11.tokenLabel, pin, keyLabel: o.pkcs11.keyLabel ?? 'fleet-issuing-ca' };
  }
  return { kind: 'file', keyPath: o.issuingKey ?? join(dir, 'issuing-key.pem') };
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const cmd = argv[0] === 'ca' ? `ca ${argv[1] ?? ''}` : (argv[0] ?? '');
  const rest = argv.slice(cmd.startsWith('ca ') ? 2 : 1);
  const { values: v } = parseArgs({
    args: rest,
    strict: true,
    options: {
      dir: { type: 'string' },
      'trust-domain': { type: 'string' },
      'pkcs11-module': { type: 'string' },
      'pkcs11-token': { type: 'string' },
      'pkcs11-pin-env': { type: 'string' },
      root: { type: 'string' },
      issuing: { type: 'string' },
      'issuing-key': { type: 'string' },
      out: { type: 'string' },
      host: { type: 'string' },
      'enroll-port': { type: 'string' },
      'device-port': { type: 'string' },
      'server-cert': { type: 'string' },
      'server-key': { type: 'string' },
      'client-ca': { type: 'string' },
      'base-topic': { type: 'string', default: 'fleet/v1' },
      station: { type: 'string', multiple: true },
      operator: { type: 'string', multiple: true },
      config: { type: 'string' },
      'persistence-dir': { type: 'string' },
      'crl-file': { type: 'string' },
      device: { type: 'string' },
      serial: { type: 'string' },
      reason: { type: 'string' },
    },
  });
  const need = (k: keyof typeof v) => (v[k] as string | undefined) ?? fail(`--${k} is required`);
  const pkcs11 = v['pkcs11-module']
    ? { module: v['pkcs11-module'], tokenLabel: need('pkcs11-token'), pinEnv: need('pkcs11-pin-env') }
    : undefined;

  switch (cmd) {
    case 'ca init': {
      const dir = need('dir');
      const ca = await createCa({
        outDir: dir,
        clock: systemClock,
        trustDomain: need('trust-domain'),
        root: { commonName: `${v['trust-domain']} root` },
        issuing: { commonName: `${v['trust-domain']} issuing CA` },
        backend: backendSpec(dir, pkcs11 ? { pkcs11 } : {}),
        keepRootKey: true,
      });
      await ca.backend.close();
      logger.info({ files: ca.files }, 'CA created; keep root-key.pem offline');
      return;
    }
    case 'ca import': {
      const dir = need('dir');
      const ca = await importCa({
        outDir: dir,
        trustDomain: need('trust-domain'),
        rootCertificate: readFileSync(need('root')),
        issuingCertificate: readFileSync(need('issuing')),
        backend: backendSpec(dir, pkcs11 ? { pkcs11 } : { issuingKey: need('issuing-key') }),
      });
      await ca.backend.close();
      logger.info({ files: ca.files }, 'CA imported');
      return;
    }
    case 'broker-config': {
      const out = need('out');
      mkdirSync(out, { recursive: true });
      const port = (k: 'enroll-port' | 'device-port') => {
        const n = Number(need(k));
        return Number.isInteger(n) && n > 0 && n < 65536 ? n : fail(`--${k} must be a port number`);
      };
      const host = need('host');
      const { conf, enrollAcl, deviceAcl } = generateMosquittoConfig({
        baseTopic: v['base-topic']!,
        enrollListener: { host, port: port('enroll-port') },
        deviceListener: { host, port: port('device-port') },
        tls: { serverCertFile: need('server-cert'), serverKeyFile: need('server-key'), clientCaFile: need('client-ca') },
        enrollAclFile: join(out, 'enroll.acl'),
        deviceAclFile: join(out, 'device.acl'),
        persistenceDir: resolve(need('persistence-dir')),
        ...(v['crl-file'] ? { crlFile: resolve(v['crl-file']) } : {}),
        stationIdentities: v.station ?? [],
        operatorIdentities: v.operator ?? [],
      });
      writeFileSync(join(out, 'mosquitto.conf'), conf);
      writeFileSync(join(out, 'enroll.acl'), enrollAcl);
      writeFileSync(join(out, 'device.acl'), deviceAcl);
      logger.info({ out, persistenceDir: resolve(need('persistence-dir')) }, 'wrote mosquitto.conf, enroll.acl, device.acl; the persistence directory must be writable by the broker');
      return;
    }
    case 'run': {
      const cfg = parseMessage(readFileSync(need('config')), configSchema, 64 * 1024);
      const backend = await openBackend(backendSpec(cfg.caDir, cfg), 'find');
      const issuer = new CertificateIssuer({ backend, issuingCertificate: readFileSync(join(cfg.caDir, 'issuing.pem')), clock: systemClock, trustDomain: cfg.trustDomain });
      const root = readFileSync(join(cfg.caDir, 'root.pem'), 'utf8');
      const inventory = new LevelInventory(join(cfg.dataDir, 'inventory'));
      await inventory.open();
      const topics = new Topics(cfg.baseTopic ?? 'fleet/v1');
      const common = {
        inventory,
        issuer,
        policy: new DefaultEnrollmentPolicy({ trustDomain: cfg.trustDomain, lifetimeSec: cfg.certificateLifetimeSec ?? 30 * 86_400, backdateSec: 300 }),
        clock: systemClock,
        topics,
        chainPems: [issuer.issuingCertificatePem],
        trustBundlePems: [root],
        logger,
      };
      // Separate budgets: enroll requests anyone can send under a device's id must not cost it its rotations.
      const limiter = () => new RateLimiter({ perKey: { ratePerSec: 0.2, burst: 5 }, global: { ratePerSec: 200, burst: 400 }, clock: systemClock });
      const enrollment = new EnrollmentService({ ...common, limiter: limiter(), ekTrust: {
          roots: cfg.manufacturerRoots.map((p) => readFileSync(p, 'utf8')),
          intermediates: (cfg.manufacturerIntermediates ?? []).map((p) => readFileSync(p, 'utf8')),
          ...(cfg.ekValidity ? { ekValidity: cfg.ekValidity } : {}),
        },
      });
      const rotation = new RotationService({ ...common, limiter: limiter() });
      const ingest = new IngestService({ inventory, clock: systemClock, topics, logger });
      const transport = new MqttTransport({
        url: cfg.brokerUrl,
        clientId: cfg.clientId ?? DEFAULT_BRIDGE_CLIENT_ID,
        ...BRIDGE_SESSION,
        tls: { ca: root, cert: readFileSync(cfg.bridgeCert, 'utf8'), key: readFileSync(cfg.bridgeKey, 'utf8') },
        logger,
      });
      const revocation = revocationService(cfg, backend, inventory, (p) =>
        transport.connected ? transport.publish(topics.fleet('crl'), p, { qos: 1, retain: true }) : Promise.reject(new Error('not connected')),
      );
      // Before the broker connection: mosquitto cannot start without the CRL file this writes.
      await revocation.start({ publish: false });
      const bridge = new Bridge({
        transport,
        topics,
        handlers: [enrollment, rotation, ingest, new OperatorRevokeHandler({ topics, revocation })],
        trustBundlePems: [root],
        logger,
        ...(cfg.sharedGroup ? { sharedGroup: cfg.sharedGroup } : {}),
      });
      let stopping = false;
      const stop = async () => {
        stopping = true;
        await revocation.stop();
        await bridge.stop();
        await inventory.close();
        await backend.close();
        process.exit(0);
      };
      process.once('SIGINT', () => void stop());
      process.once('SIGTERM', () => void stop());
      try {
        // Waits for an unreachable broker (one log line), so the bridge may start before mosquitto.
        await bridge.start();
      } catch (e) {
        if (stopping) return;
        throw e;
      }
      // Publishes the CRL now that the bridge is connected; then a new CRL before each nextUpdate and
      // retries of anything that failed.
      await revocation.tick();
      revocation.startTimer(60_000);
      logger.info({ broker: cfg.brokerUrl }, 'bridge running');
      return;
    }
    case 'revoke': {
      const cfg = parseMessage(readFileSync(need('config')), configSchema, 64 * 1024);
      const reason = need('reason');
      if ((v.device === undefined) === (v.serial === undefined)) fail('give exactly one of --device and --serial');
      const inventory = new LevelInventory(join(cfg.dataDir, 'inventory'));
      try {
        await inventory.open();
      } catch (e) {
        const locked = /lock/i.test(String((e as Error).message) + String(((e as { cause?: Error }).cause)?.message ?? ''));
        if (locked) {
          process.stderr.write(
            'bridge: REVOCATION_BRIDGE_RUNNING: the inventory is locked by a running bridge; stop it, or send the operator command <base>/operators/<id>/commands/revoke\n',
          );
          process.exit(3);
        }
        throw e;
      }
      const backend = await openBackend(backendSpec(cfg.caDir, cfg), 'find');
      const revocation = revocationService(cfg, backend, inventory);
      try {
        await revocation.start();
        const r = v.device !== undefined ? await revocation.revokeDevice(v.device, reason) : await revocation.revokeSerial(v.serial!, reason);
        logger.info({ serials: r.serials, crlNumber: r.crlNumber.toString(), enforced: r.enforced }, 'revoked');
        if (cfg.broker && !r.enforced) process.exitCode = 4;
      } catch (e) {
        const c = e as { code?: string; message?: string };
        process.stderr.write(`bridge: ${c.code ?? 'INTERNAL'}: ${c.message ?? String(e)}\n`);
        process.exitCode = 2;
      } finally {
        await revocation.stop();
        await inventory.close();
        await backend.close();
      }
      return;
    }
    default:
      fail(`unknown command "${argv.join(' ')}"; commands: ca init, ca import, broker-config, run, revoke`);
  }
}

main().catch((e: { code?: string; message?: string }) => {
  logger.error({ code: e.code }, e.message ?? String(e));
  process.exit(1);
});

import { randomBytes, X509Certificate } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { buildTpmCsr } from '../../../../agent/src/csr.js';
import { newEnrollClientId } from '../../../../agent/src/enrollment.js';
import { DEFAULT_AUDITOR } from '../../../../broker-bridge/src/embedded-fleet.js';
import { isCodedError } from '../../../../common/coded-error.js';
import { hashEnrollmentToken, mintEnrollmentToken } from '../../../../common/enrollment-token.js';
import { decode, encode, type BodyOf, type EnrollRequest } from '../../../../common/protocol/messages.js';
import type { DeviceTopic } from '../../../../common/protocol/topics.js';
import { MqttTransport } from '../../../../common/transport/mqtt-transport.js';
import { NativeTpm } from '../../../../native/lib/native-tpm.js';
import type { KeyBlobs, TpmKey } from '../../../../native/lib/tpm.js';
import { marshalPublic2b } from '../../../../native/lib/wire/public.js';
import { ekEccTemplate } from '../../../../native/lib/wire/templates.js';
import { TpmFactory, type ManufacturedTpm } from '../../factory.js';
import type { SimFleet } from '../sim-fleet.js';
import { countCodes, invariant, pick, type Invariant, type Scenario } from '../scenario.js';
import { activeCertificates, enrollTimeoutMs, settleOnline, sleep } from './common.js';
import { enrollOutcome } from './enroll-storm.js';
import { rotateAll } from './rotation-campaign.js';

/**
 * Attacks on the real broker and bridge while the honest fleet enrolls and runs. The attacker holds
 * genuine TPMs of the fleet's own manufacturer and one of a manufacturer the fleet does not trust, every
 * honest device's one-time token (as if stolen from the station), a fleet-issued certificate of its own
 * (a compromised insider device) and the public facts of every device (ids, EK certificates).
 *  - foreign token (before the owners power on): A's token for device B, and A's token with another
 *    TPM's EK → TOKEN_MISMATCH, neither token consumed (A and B then enroll);
 *  - junk enrolls under device J's id (before J powers on): malformed → BAD_REQUEST, unknown tokens →
 *    TOKEN_UNKNOWN, one token flooded → RATE_LIMITED; J then enrolls and rotates as if nothing happened;
 *  - a foreign-manufacturer TPM registered anyway → EK_UNTRUSTED;
 *  - activation by another TPM (a token bound to TPM T's EK, answered by TPM S) → ACTIVATION_FAILED;
 *  - replayed token (A's, after A enrolled) → TOKEN_USED; re-attestation (no token) with A's EK rebuilt
 *    from its public certificate and another TPM's AK → AK_MISMATCH;
 *  - client-id takeover of device V on both listeners → refused or renamed; V not kicked; an eavesdropper
 *    on the enrollment listener learns no attempt's client id;
 *  - cross-device topics: the insider publishes on V's topics (refused, 0x87) and subscribes to them
 *    (nothing delivered); V and its inventory record unchanged.
 * Every refusal's code counts in `failures`; honest devices must all end online with one identity.
 */
export const attacks: Scenario = {
  name: 'attacks',
  summary: 'replayed and foreign tokens, foreign TPM, activation by another TPM, client-id takeover, junk enrolls, cross-device topics: all refused or without effect',
  measures: 'power-on → online (honest devices, under attack)',
  async run(sim, ctx) {
    const ids = [...sim.devices.keys()];
    const [a, b, j] = roles(ids, ctx.random);
    const heldBack = [...new Set([a, b, j])];
    const codes: string[] = [];
    const rows: Invariant[] = [];
    const kit = await Kit.start(sim);
    try {
      const eavesdropper = await kit.eavesdrop();
      sim.powerOn(ids.filter((id) => !heldBack.includes(id)));
      ctx.log(`fleet powering on; ${heldBack.join(', ')} held back for the attacks before their enrollment`);

      rows.push(await foreignToken(sim, kit, codes, a, b));
      const junk = await junkEnrolls(sim, kit, codes, j);
      sim.powerOn(heldBack);
      rows.push(await foreignManufacturer(sim, kit, codes));
      rows.push(await activationByAnotherTpm(sim, kit, codes));
      await settleOnline(sim, ids, enrollTimeoutMs(ids.length));

      rows.push(...(await replayedToken(sim, kit, codes, a)));
      rows.push(await takeover(sim, kit, codes, b, eavesdropper));
      rows.push(await crossDeviceTopics(sim, kit, codes, b));
      // The junk victim's rotation (its own rate budget, over its own mTLS session) works as for anyone.
      const rotated = (await rotateAll(sim, [j], ctx.log)).succeeded === 1;
      rows.push({ ...junk, ok: junk.ok && rotated, detail: `${junk.detail}; ${j} ${rotated ? 'then enrolled and rotated' : 'did not rotate afterwards'}` });
      rows.push(await reattestFlood(sim, kit, codes, a));
      rows.push(await attackersGotNothing(sim, kit));

      const honest = enrollOutcome(sim, ids);
      const failures = { ...honest.failures };
      for (const c of codes) failures[c] = (failures[c] ?? 0) + 1;
      return {
        succeeded: honest.succeeded,
        failures,
        lost: honest.lost,
        latenciesMs: honest.latenciesMs,
        invariants: [...rows, ...honest.invariants],
        figures: { attacks: codes.length, refusedByBridge: codes.filter((c) => !c.startsWith('TRANSPORT_')).length, refusedByBroker: codes.filter((c) => c.startsWith('TRANSPORT_')).length },
      };
    } finally {
      await kit.stop();
    }
  },
};

/** Token owner A, foreign-token target B, junk victim J: distinct when the fleet allows. */
function roles(ids: readonly string[], random: () => number): [string, string, string] {
  const p = pick(ids, Math.min(3, ids.length), random);
  return [p[0]!, p[1] ?? p[0]!, p[2] ?? p[1] ?? p[0]!];
}

/** One attack row: each step's expected and actual code. */
function row(name: string, steps: readonly { what: string; want: string | readonly string[]; got: string }[], extra: readonly string[], okDetail: string): Invariant {
  const wrong = steps.filter((s) => !(typeof s.want === 'string' ? [s.want] : s.want).includes(s.got)).map((s) => `${s.what}: ${s.got}`);
  return invariant(name, [...wrong, ...extra], okDetail);
}

/** What an attack on a device may not change: its enrollment, certificates, token and audit trail. */
async function standing(sim: SimFleet, id: string): Promise<string> {
  const inv = sim.fleet.inventory;
  const d = inv.getDevice(id);
  const token = sim.devices.get(id)?.bootstrap.token;
  return JSON.stringify({
    enrolledAt: d?.enrolledAt,
    akName: d?.akName,
    certSerial: d?.certSerial,
    certs: inv.listCertificates(id).map((c) => [c.serial, c.supersededAt, c.revokedAt]),
    token: token ? inv.getToken(hashEnrollmentToken(token)) : undefined,
    audit: (await inv.listAudit({ deviceId: id })).length,
  });
}

async function unchanged(sim: SimFleet, ids: readonly string[], attack: () => Promise<void>): Promise<string[]> {
  // The device's own lifecycle first: an 'enrolled' event still in its outbox would land in the audit
  // trail during the attack (a device enrolled just before it) and look like the attack's effect.
  await sim.until(
    async () => {
      const statuses = await sim.statuses();
      return ids.every((id) => (statuses.get(id)?.outbox.pending ?? 0) === 0);
    },
    30_000,
    `every event of ${ids.join(', ')} delivered before the attack`,
  );
  const before = await Promise.all(ids.map((id) => standing(sim, id)));
  await attack();
  const after = await Promise.all(ids.map((id) => standing(sim, id)));
  return ids.filter((_, i) => before[i] !== after[i]).map((id) => `${id}'s inventory record changed`);
}

async function foreignToken(sim: SimFleet, kit: Kit, codes: string[], a: string, b: string): Promise<Invariant> {
  const tokenA = sim.devices.get(a)!.bootstrap.token!;
  // With a one-device fleet there is no B: the attacker's own registered device stands in.
  const target = b === a ? kit.claimId : b;
  const steps: { what: string; want: string; got: string }[] = [];
  const changed = await unchanged(sim, [a, ...(b === a ? [] : [b])], async () => {
    const p = await kit.probe();
    steps.push({ what: `${a}'s token for ${target}`, want: 'TOKEN_MISMATCH', got: code(await p.enroll(await kit.stolen.body(target, { token: tokenA }))) });
    steps.push({ what: `${a}'s token with another TPM's EK`, want: 'TOKEN_MISMATCH', got: code(await p.enroll(await kit.stolen.body(a, { token: tokenA }))) });
  });
  codes.push(...steps.map((s) => s.got));
  return row('foreign token refused: TOKEN_MISMATCH', steps, changed, `${a}'s token refused for ${target} and with a genuine TPM that is not ${a}'s; neither token consumed`);
}

async function junkEnrolls(sim: SimFleet, kit: Kit, codes: string[], j: string): Promise<Invariant> {
  const got: string[] = [];
  const changed = await unchanged(sim, [j], async () => {
    const p = await kit.probe();
    const template = encode('enroll', 'junkTemplate', Date.now(), await kit.stolen.body(j, { token: mintEnrollmentToken().token }));
    const wire = JSON.parse(template.toString()) as { body: Record<string, unknown> };
    const malformed: [string, Buffer][] = [
      ['unknown0', Buffer.from(`{"v":1,"requestId":"junk0001", "body": {"deviceId":"${j}"`)],
      ['junk0002', Buffer.from(JSON.stringify({ ...wire, v: 2, requestId: 'junk0002' }))],
      ['junk0003', Buffer.from(JSON.stringify({ ...wire, requestId: 'junk0003', body: { ...wire.body, admin: true } }))],
      ['junk0004', Buffer.from(JSON.stringify({ ...wire, requestId: 'junk0004', body: { ...wire.body, csr: 'x'.repeat(20_000) } }))],
      ['junk0005', Buffer.from(JSON.stringify({ ...wire, requestId: 'junk0005', body: { ...wire.body, ekPublic: 42 } }))],
    ];
    for (const [requestId, payload] of malformed) got.push(code(await p.ask('enroll', payload, requestId)));
    const flooded = await kit.stolen.body(j, { token: mintEnrollmentToken().token });
    for (let i = 0; i < 20; i++) got.push(code(await p.enroll(flooded)));
    for (let i = 0; i < 5; i++) got.push(code(await p.enroll({ ...flooded, token: mintEnrollmentToken().token })));
  });
  codes.push(...got);
  const tally = Object.entries(countCodes(got)).map(([c, n]) => `${c}×${n}`).join(', ');
  const steps = [
    ...got.slice(0, 5).map((g, i) => ({ what: `malformed enroll ${i + 1}`, want: 'BAD_REQUEST', got: g })),
    ...got.slice(5).map((g, i) => ({ what: `junk-token enroll ${i + 1}`, want: ['TOKEN_UNKNOWN', 'RATE_LIMITED'], got: g })),
  ];
  const limited = got.includes('RATE_LIMITED') ? [] : ['the flood of one token was never rate limited'];
  return row('junk enrolls refused, the device not locked out', steps, [...changed, ...limited], `${tally} under ${j}'s id`);
}

async function foreignManufacturer(sim: SimFleet, kit: Kit, codes: string[]): Promise<Invariant> {
  const p = await kit.probe();
  const got = code(await p.enroll(await kit.foreign.body(kit.foreignId, { token: kit.foreignToken })));
  codes.push(got);
  return row('foreign-manufacturer TPM refused: EK_UNTRUSTED', [{ what: 'enroll with an untrusted EK chain', want: 'EK_UNTRUSTED', got }], [], `${kit.foreignId} (registered with a foreign vendor's EK and a valid token) refused`);
}

async function activationByAnotherTpm(sim: SimFleet, kit: Kit, codes: string[]): Promise<Invariant> {
  const p = await kit.probe();
  // The token is bound to TPM T's EK; the attacker presents T's (public) EK with its own TPM S's AK.
  const ch = await p.enroll(await kit.stolen.body(kit.claimId, { token: kit.claimToken }, kit.claimEk));
  if (ch.kind !== 'challenge') {
    codes.push(code(ch));
    return row('activation by another TPM refused: ACTIVATION_FAILED', [{ what: 'enroll with T\'s EK', want: 'challenge', got: code(ch) }], [], '');
  }
  const { proof, tpmRefusal } = await kit.stolen.answer(ch.body);
  const got = code(await p.proof(proof));
  codes.push(got);
  const opened = tpmRefusal === undefined ? ['TPM S opened a credential sealed to TPM T\'s EK'] : [];
  return row('activation by another TPM refused: ACTIVATION_FAILED', [{ what: 'proof from TPM S', want: 'ACTIVATION_FAILED', got }], opened, `credential sealed to T's EK; S's TPM refused it (${tpmRefusal}), its answer refused`);
}

async function replayedToken(sim: SimFleet, kit: Kit, codes: string[], a: string): Promise<Invariant[]> {
  const since = Date.now();
  let replay = '';
  let reattest = '';
  const changed = await unchanged(sim, [a], async () => {
    const p = await kit.probe();
    replay = code(await p.enroll(await kit.stolen.body(a, { token: sim.devices.get(a)!.bootstrap.token! })));
    // No token at all: re-attestation under A's EK (rebuilt from its public EK certificate) with another TPM's AK.
    reattest = code(await p.enroll(await kit.stolen.body(a, { mode: 'reattest' }, publicEk(sim, a))));
  });
  codes.push(replay, reattest);
  const effects = [...changed, ...leftOnline(sim, a, since)];
  return [
    row('replayed token refused: TOKEN_USED', [{ what: `${a}'s used token`, want: 'TOKEN_USED', got: replay }], effects, `${a}'s token, replayed after its enrollment, refused; ${a} unchanged and online`),
    row('re-attestation with a public EK and another TPM\'s AK refused: AK_MISMATCH', [{ what: `re-attestation as ${a}`, want: 'AK_MISMATCH', got: reattest }], effects, `${a}'s EK rebuilt from its certificate passes the EK checks; the AK is not the one bound at enrollment`),
  ];
}

/**
 * Junk re-attestations under A's EK (rebuilt from its public certificate) with another TPM's AK, enough
 * to drain a rate bucket; then the operator makes A re-attest for real. A's own bucket is keyed by its
 * EK and its AK (which no certificate shows), so A is neither refused nor slowed: no RATE_LIMITED.
 */
async function reattestFlood(sim: SimFleet, kit: Kit, codes: string[], a: string): Promise<Invariant> {
  const p = await kit.probe();
  const got: string[] = [];
  for (let i = 0; i < 15; i++) got.push(code(await p.enroll(await kit.stolen.body(a, { mode: 'reattest' }, publicEk(sim, a)))));
  codes.push(...got);
  const inv = sim.fleet.inventory;
  const before = inv.getDevice(a)?.reattestedAt;
  const logsBefore = sim.logs.length;
  const op = await sim.operator();
  try {
    await op.call('reattest', { deviceId: a });
  } finally {
    await op.close();
  }
  const done = () => inv.getDevice(a)?.reattestedAt !== undefined && inv.getDevice(a)?.reattestedAt !== before && sim.state(a) === 'online';
  await sim.until(done, 30_000, `${a} to re-attest after the flood`).catch(() => undefined);
  const limited = sim.logs.slice(logsBefore).filter((l) => l.deviceId === a && l.code === 'RATE_LIMITED');
  return row(
    're-attestation flood under a public EK: the device is not locked out',
    got.map((g, i) => ({ what: `junk re-attestation ${i + 1} as ${a}`, want: ['AK_MISMATCH', 'RATE_LIMITED'], got: g })),
    [...(done() ? [] : [`${a} did not re-attest (${sim.state(a)})`]), ...(limited.length ? [`${a} was rate limited ${limited.length} times`] : [])],
    `15 junk re-attestations refused in their own bucket; ${a} then re-attested at once (operator reattest)`,
  );
}

async function takeover(sim: SimFleet, kit: Kit, codes: string[], v: string, eavesdropper: Eavesdropper): Promise<Invariant> {
  const before = (await sim.statuses()).get(v);
  const since = Date.now();
  const f = sim.fleet;
  const attempts: { what: string; want: string; url: string; clientId: string; tls?: { cert: string; key: string } }[] = [
    { what: `anonymous as ${v}`, want: 'TRANSPORT_CONNECT_REFUSED', url: f.broker.enrollUrl, clientId: v },
    { what: 'anonymous as role:bridge', want: 'TRANSPORT_CONNECT_REFUSED', url: f.broker.enrollUrl, clientId: 'role:bridge' },
    { what: `insider certificate as ${v}`, want: 'TRANSPORT_CONNECT_REFUSED', url: f.broker.deviceUrl, clientId: v, tls: kit.insider },
    // Allowed ids that name nobody else's session: the enrollment one is its own, the mTLS one becomes the CN.
    { what: `anonymous as enr-${v}`, want: 'connected', url: f.broker.enrollUrl, clientId: `enr-${v}` },
    { what: `insider certificate as enr-${v}`, want: 'connected', url: f.broker.deviceUrl, clientId: `enr-${v}`, tls: kit.insider },
  ];
  const steps: { what: string; want: string; got: string }[] = [];
  for (const at of attempts) {
    const t = kit.transport(at.url, at.clientId, at.tls);
    const got = await t.connect().then(
      () => 'connected',
      (e: unknown) => (isCodedError(e) ? e.code : 'connect failed'),
    );
    steps.push({ what: at.what, want: at.want, got });
    if (got === 'connected') await sleep(300); // long enough for a kick to land
    await t.close();
  }
  await sleep(500);
  codes.push(...steps.map((s) => s.got).filter((c) => c !== 'connected'));
  const after = (await sim.statuses()).get(v);
  const kicked = [
    ...(after?.tlsHandshakes !== before?.tlsHandshakes ? [`${v} reconnected (${before?.tlsHandshakes} → ${after?.tlsHandshakes} handshakes)`] : []),
    ...leftOnline(sim, v, since),
    ...(sim.state(v) === 'online' && f.inventory.getDevice(v)?.online === true ? [] : [`${v} is ${sim.state(v)}, inventory online ${String(f.inventory.getDevice(v)?.online)}`]),
    ...eavesdropper.others().map((t) => `the eavesdropper on the enrollment listener received ${t}`),
    ...(eavesdropper.own() ? [] : ['the eavesdropper never received its own reply: its silence proves nothing']),
  ];
  return row('client-id takeover refused, nobody kicked', steps, kicked, `ids of ${v} and the bridge refused (CONNACK); enr- ids get their own session or the certificate's CN; ${v} kept its session; an eavesdropper subscribed to # on the enrollment listener during ${sim.devices.size} enrollments received only its own reply, so no attempt's enr- id leaks`);
}

async function crossDeviceTopics(sim: SimFleet, kit: Kit, codes: string[], v: string): Promise<Invariant> {
  const f = sim.fleet;
  const serial = f.inventory.getDevice(v)!.certSerial!;
  const since = Date.now();
  const auditorSeen: string[] = [];
  const auditor = kit.transport(f.broker.deviceUrl, 'enr-attacks-auditor', await f.clientCertificate(DEFAULT_AUDITOR).then((c) => ({ cert: c.certPem, key: c.keyPem })));
  const insider = kit.transport(f.broker.deviceUrl, 'enr-attacks-insider', kit.insider);
  await Promise.all([auditor.connect(), insider.connect()]);
  try {
    await auditor.subscribe(`${f.topics.base}/devices/${v}/#`, (m) => void auditorSeen.push(`${m.topic} ${m.payload.toString()}`));
    const now = Date.now();
    const forged: [DeviceTopic, Buffer, boolean][] = [
      ['status', encode('status', 'attackForged01', now, { deviceId: v, online: false, state: 'revoked', errorCode: 'FORGED_BY_ATTACKER' }), true],
      ['events', encode('events', 'attackForged02', now, { type: 'revoked', at: now, seq: 1_000_000, message: 'FORGED_BY_ATTACKER' }), false],
      ['rotateBegin', encode('rotateBegin', 'attackForged03', now, { deviceId: v, currentSerial: serial }), false],
      ['rotateConfirm', encode('rotateConfirm', 'attackForged04', now, { serial, previousSerial: serial }), false],
      ['command', encode('command', 'attackForged05', now, { command: 'rotate-now', issuedAt: now, expiresAt: now + 600_000, jitterSec: 0, by: 'FORGED_BY_ATTACKER' }), true],
      ['timeRequest', encode('timeRequest', 'attackForged06', now, {}), false],
      ['eventsAck', encode('eventsAck', 'attackForged07', now, { new: true }), false],
      ['timeReply', encode('timeReply', 'attackForged08', now, { deviceSentAt: now, serverTime: now - 86_400_000 }), false],
    ];
    const steps: { what: string; want: string; got: string }[] = [];
    for (const [topic, payload, retain] of forged) {
      const got = await insider.publish(f.topics.device(v, topic), payload, { qos: 1, retain }).then(
        () => 'published',
        (e: unknown) => (isCodedError(e) ? e.code : 'publish failed'),
      );
      steps.push({ what: `publish ${topic} as ${v}`, want: 'TRANSPORT_PUBLISH_REFUSED', got });
    }
    codes.push(...steps.map((s) => s.got));
    // Reading: mosquitto grants the SUBSCRIBE and filters on delivery; V's retained status would arrive at once.
    const read: string[] = [];
    let control = false;
    // A refused SUBSCRIBE (TRANSPORT_SUBSCRIBE_REFUSED) would do as well as a filtered one.
    await insider.subscribe(`${f.topics.base}/devices/${v}/#`, (m) => void read.push(m.topic)).catch(() => undefined);
    await insider.subscribe(f.topics.fleet('trustBundle'), () => void (control = true));
    await sim.until(() => control, 5_000, 'the trust bundle (control)').catch(() => undefined);
    await sleep(500);
    const inv = f.inventory.getDevice(v);
    const events = JSON.stringify(await f.inventory.listDeviceEvents(v));
    const effects = [
      ...(control ? [] : ['the insider never received the trust bundle: the subscription check proves nothing']),
      ...read.map((t) => `the insider received ${t}`),
      ...auditorSeen.filter((m) => /attackForged|FORGED_BY_ATTACKER/.test(m)).map((m) => `delivered: ${m.slice(0, 80)}`),
      ...(auditorSeen.some((m) => m.includes('/status ')) ? [] : [`the auditor saw no status of ${v}: nothing was observed`]),
      ...(inv?.online === true && inv.status?.state === 'online' && inv.certSerial === serial ? [] : [`${v}'s inventory record is ${inv?.status?.state}/${String(inv?.online)} on ${inv?.certSerial}`]),
      ...(events.includes('attackForged') ? [`a forged event is in ${v}'s history`] : []),
      ...leftOnline(sim, v, since),
      ...(activeCertificates(sim, v).map((c) => c.serial).join() === serial ? [] : [`${v}'s certificate changed`]),
    ];
    return row('cross-device topics: nothing delivered, victim unchanged', steps, effects, `8 forged publishes on ${v}'s topics refused (0x87); subscribing to them delivered nothing (the trust bundle did); ${v} and its record unchanged`);
  } finally {
    await Promise.all([auditor.close(), insider.close()]);
  }
}

/** No attacker identity got anything: no certificate, no enrollment, no token consumed. */
async function attackersGotNothing(sim: SimFleet, kit: Kit): Promise<Invariant> {
  const inv = sim.fleet.inventory;
  const wrong = [
    ...[kit.foreignId, kit.claimId].flatMap((id) => [
      ...(inv.getDevice(id)?.enrolledAt === undefined ? [] : [`${id} enrolled`]),
      ...(inv.listCertificates(id).length ? [`${id} holds a certificate`] : []),
    ]),
    ...[kit.foreignToken, kit.claimToken].filter((t) => inv.getToken(hashEnrollmentToken(t))?.usedAt !== undefined).map(() => 'an attacker-held token was consumed'),
    ...inv.listCertificates().filter((c) => c.deviceId.startsWith('attacker-')).map((c) => `certificate ${c.serial} for ${c.deviceId}`),
  ];
  return invariant('attackers got no certificate and consumed no token', wrong, `${inv.listCertificates().length} certificates, all for honest devices`);
}

/** A device's EK public area as anyone can rebuild it: the TCG template with the point from its EK certificate. */
function publicEk(sim: SimFleet, id: string): { certificate: Buffer; publicArea: Buffer } {
  const certificate = Buffer.from(sim.fleet.inventory.getDevice(id)!.ekCertificate!, 'base64');
  const jwk = new X509Certificate(certificate).publicKey.export({ format: 'jwk' });
  return { certificate, publicArea: marshalPublic2b({ ...ekEccTemplate(), x: Buffer.from(jwk.x!, 'base64url'), y: Buffer.from(jwk.y!, 'base64url') }) };
}

/** States `id` reported since `since` other than online: a kick shows as connecting → online. */
function leftOnline(sim: SimFleet, id: string, since: number): string[] {
  return sim.devices.get(id)!.timeline.filter((t) => t.at >= since && t.state !== 'online').map((t) => `${id} went ${t.state}`);
}

type Answer =
  | { kind: 'challenge'; body: BodyOf<'enrollChallenge'> }
  | { kind: 'accepted'; serial: string }
  | { kind: 'rejected'; code: string };

const code = (a: Answer): string => (a.kind === 'rejected' ? a.code : a.kind);

/**
 * The attacker's equipment: TPM S (genuine, the fleet's manufacturer, held by the attacker), TPM T's EK
 * (genuine; only its public EK is known), TPM F (a foreign manufacturer), two devices registered in the
 * inventory as a careless station would (one for T's EK, one for F's), and a fleet certificate for
 * `attacker-insider`. Every MQTT client it opens is closed by `stop()`.
 */
class Kit {
  readonly claimId = 'attacker-claim';
  readonly foreignId = 'attacker-foreign';
  readonly #transports: MqttTransport[] = [];
  readonly #tpms: ManufacturedTpm[];

  private constructor(
    readonly sim: SimFleet,
    readonly stolen: AttackerTpm,
    readonly foreign: AttackerTpm,
    readonly claimEk: { certificate: Buffer; publicArea: Buffer },
    readonly claimToken: string,
    readonly foreignToken: string,
    readonly insider: { cert: string; key: string },
    tpms: ManufacturedTpm[],
  ) {
    this.#tpms = tpms;
  }

  static async start(sim: SimFleet): Promise<Kit> {
    const dir = join(dirname(dirname([...sim.devices.values()][0]!.dataDir)), 'attacker');
    mkdirSync(dir, { recursive: true });
    const vendor = await TpmFactory.create({ name: 'Untrusted TPM Vendor' });
    const tpms = await Promise.all([sim.factory.manufacture(join(dir, 's')), sim.factory.manufacture(join(dir, 't')), vendor.manufacture(join(dir, 'f'))]);
    const [s, t, f] = tpms as [ManufacturedTpm, ManufacturedTpm, ManufacturedTpm];
    const register = async (deviceId: string, m: ManufacturedTpm) => {
      const { token, tokenHash } = mintEnrollmentToken();
      const now = Date.now();
      await sim.fleet.inventory.registerDevice(
        { deviceId, ekPublicHash: m.ekPublicHash, ekCertificate: m.ekCertificateDer.toString('base64'), ekKind: 'ecc', metadata: { model: 'attacker' }, registeredAt: now },
        { tokenHash, deviceId, ekPublicHash: m.ekPublicHash, createdAt: now, expiresAt: now + 3_600_000 },
      );
      return token;
    };
    const opened: AttackerTpm[] = [];
    try {
      const claimEk = { certificate: t.ekCertificateDer, publicArea: await AttackerTpm.ekPublicOf(t) };
      const insider = await sim.fleet.clientCertificate('attacker-insider');
      for (const m of [s, f]) opened.push(await AttackerTpm.open(m));
      return new Kit(sim, opened[0]!, opened[1]!, claimEk, await register('attacker-claim', t), await register('attacker-foreign', f), { cert: insider.certPem, key: insider.keyPem }, tpms);
    } catch (e) {
      await Promise.all(opened.map((o) => o.close()));
      await Promise.all(tpms.map((m) => m.tpm.stop().catch(() => undefined)));
      throw e;
    }
  }

  transport(url: string, clientId: string, tls?: { cert: string; key: string }): MqttTransport {
    const t = new MqttTransport({ url, clientId, tls: { ca: this.sim.fleet.trustBundle, ...tls }, reconnectPeriodMs: 0, connectTimeoutMs: 5_000, onError: () => undefined });
    this.#transports.push(t);
    return t;
  }

  /** A fresh enrollment-listener client under its own random `enr-…` id. */
  async probe(): Promise<EnrollProbe> {
    const clientId = newEnrollClientId();
    const p = new EnrollProbe(this.transport(this.sim.fleet.broker.enrollUrl, clientId), this.sim, clientId);
    await p.open();
    return p;
  }

  /**
   * An anonymous client on the enrollment listener subscribed to everything, to learn other attempts'
   * `enr-…` ids (a known id can be taken over: the broker hands the session to the newer connection).
   * Control: it sends one junk request on its own topic, whose rejection it must receive.
   */
  async eavesdrop(): Promise<Eavesdropper> {
    const clientId = newEnrollClientId();
    const seen: string[] = [];
    const t = this.transport(this.sim.fleet.broker.enrollUrl, clientId);
    await t.connect();
    for (const filter of ['#', `${this.sim.fleet.topics.base}/enroll/+/+`]) await t.subscribe(filter, (m) => void seen.push(m.topic));
    await t.publish(this.sim.fleet.topics.enrollment(clientId, 'enroll'), Buffer.from('{}'), { qos: 1 });
    const mine = (topic: string) => topic.startsWith(`${this.sim.fleet.topics.base}/enroll/${clientId}/`);
    return { own: () => seen.some(mine), others: () => seen.filter((topic) => !mine(topic)) };
  }

  async stop(): Promise<void> {
    await Promise.all(this.#transports.map((t) => t.close().catch(() => undefined)));
    await Promise.all([this.stolen.close(), this.foreign.close()]);
    await Promise.all(this.#tpms.map((m) => m.tpm.stop().catch(() => undefined)));
  }
}

interface Eavesdropper {
  /** Whether its own reply arrived (the control). */
  own(): boolean;
  /** Topics of other clients it received: must be none. */
  others(): string[];
}

/** One enrollment-listener client: sends enroll/proof payloads and waits for the bridge's answer by requestId. */
class EnrollProbe {
  readonly #waiting = new Map<string, (a: Answer) => void>();
  constructor(
    readonly transport: MqttTransport,
    readonly sim: SimFleet,
    readonly clientId: string,
  ) {}

  async open(): Promise<void> {
    const topics = this.sim.fleet.topics;
    await this.transport.connect();
    const settle = (requestId: string, a: Answer) => {
      this.#waiting.get(requestId)?.(a);
      this.#waiting.delete(requestId);
    };
    await this.transport.subscribe(topics.enrollment(this.clientId, 'enrollChallenge'), (m) => {
      const msg = decode('enrollChallenge', m.payload);
      settle(msg.requestId, { kind: 'challenge', body: msg.body });
    });
    await this.transport.subscribe(topics.enrollment(this.clientId, 'enrollAccepted'), (m) => {
      const msg = decode('enrollAccepted', m.payload);
      settle(msg.requestId, { kind: 'accepted', serial: msg.body.serial });
    });
    await this.transport.subscribe(topics.enrollment(this.clientId, 'enrollRejected'), (m) => {
      const msg = decode('enrollRejected', m.payload);
      settle(msg.requestId, { kind: 'rejected', code: msg.error.code });
    });
  }

  /** Publishes `payload` on this client's `kind` topic; resolves with the answer to `requestId` (a timeout is an answer too). */
  ask(kind: 'enroll' | 'enrollProof', payload: Buffer, requestId: string, timeoutMs = 10_000): Promise<Answer> {
    return new Promise<Answer>((resolve) => {
      const timer = setTimeout(() => {
        this.#waiting.delete(requestId);
        resolve({ kind: 'rejected', code: 'NO_ANSWER' });
      }, timeoutMs);
      this.#waiting.set(requestId, (a) => {
        clearTimeout(timer);
        resolve(a);
      });
      this.transport.publish(this.sim.fleet.topics.enrollment(this.clientId, kind), payload, { qos: 1 }).catch((e: unknown) => {
        clearTimeout(timer);
        this.#waiting.delete(requestId);
        resolve({ kind: 'rejected', code: isCodedError(e) ? e.code : 'PUBLISH_FAILED' });
      });
    });
  }

  enroll(body: EnrollRequest): Promise<Answer> {
    const requestId = randomBytes(12).toString('base64url');
    return this.ask('enroll', encode('enroll', requestId, Date.now(), body), requestId);
  }

  proof(body: BodyOf<'enrollProof'>): Promise<Answer> {
    const requestId = randomBytes(12).toString('base64url');
    return this.ask('enrollProof', encode('enrollProof', requestId, Date.now(), body), requestId);
  }
}

interface HeldKey {
  readonly blobs: KeyBlobs;
  readonly publicArea: Buffer;
}

/**
 * A real TPM in the attacker's hands. Its AK and identity key live as blobs, loaded per operation and
 * flushed after: swtpm has three object slots.
 */
class AttackerTpm {
  private constructor(
    readonly tpm: NativeTpm,
    readonly ek: { certificate: Buffer; publicArea: Buffer },
    readonly ak: HeldKey,
    readonly key: HeldKey,
  ) {}

  static async ekPublicOf(m: ManufacturedTpm): Promise<Buffer> {
    const tpm = await NativeTpm.open(m.tpm.tcti);
    try {
      const ek = await tpm.createEk('ecc');
      await tpm.flush(ek);
      return ek.publicArea;
    } finally {
      await tpm.close();
    }
  }

  static async open(m: ManufacturedTpm): Promise<AttackerTpm> {
    const ekPublic = await AttackerTpm.ekPublicOf(m);
    const tpm = await NativeTpm.open(m.tpm.tcti);
    const srk = await tpm.ensureSrk();
    const hold = async (made: { key: TpmKey; blobs: KeyBlobs }): Promise<HeldKey> => {
      await tpm.flush(made.key);
      return { blobs: made.blobs, publicArea: made.key.publicArea };
    };
    const ak = await hold(await tpm.createAttestationKey(srk));
    const key = await hold(await tpm.createIdentityKey(srk));
    return new AttackerTpm(tpm, { certificate: m.ekCertificateDer, publicArea: ekPublic }, ak, key);
  }

  /** Runs `fn` with the AK and the identity key loaded (two of swtpm's three slots), flushing both after. */
  async #loaded<T>(fn: (ak: TpmKey, key: TpmKey) => Promise<T>): Promise<T> {
    const srk = await this.tpm.ensureSrk();
    const ak = await this.tpm.loadKey(srk, this.ak.blobs);
    try {
      const key = await this.tpm.loadKey(srk, this.key.blobs);
      return await fn(ak, key).finally(() => this.tpm.flush(key));
    } finally {
      await this.tpm.flush(ak);
    }
  }

  /** An enroll request as `deviceId` with this TPM's AK and key, under its own EK or one it claims. */
  async body(deviceId: string, auth: { token: string } | { mode: 'reattest' }, ek = this.ek): Promise<EnrollRequest> {
    const csr = await this.#loaded((_, key) => buildTpmCsr(this.tpm, key, deviceId));
    return { deviceId, ...auth, ekKind: 'ecc', ekCertificate: ek.certificate, ekPublic: ek.publicArea, akPublic: this.ak.publicArea, keyPublic: this.key.publicArea, csr };
  }

  /**
   * The best answer this TPM has to a challenge: the credential opened with its own EK (refused by the
   * TPM when it was sealed to another EK: then a guessed secret) and a real certification of its key.
   */
  async answer(c: BodyOf<'enrollChallenge'>): Promise<{ proof: BodyOf<'enrollProof'>; tpmRefusal: string | undefined }> {
    return this.#loaded(async (ak, key) => {
      const ek = await this.tpm.createEk('ecc');
      let secret: Buffer;
      let tpmRefusal: string | undefined;
      try {
        secret = await this.tpm.activateCredential(ak, ek, c.credentialBlob, c.encryptedSecret);
      } catch (e) {
        tpmRefusal = isCodedError(e) ? e.code : 'TPM_ERROR';
        secret = randomBytes(32);
      } finally {
        await this.tpm.flush(ek);
      }
      const att = await this.tpm.certify(key, ak, c.nonce);
      return { proof: { challengeId: c.challengeId, secret, certifyInfo: att.attest, certifySignature: att.signature }, tpmRefusal };
    });
  }

  close(): Promise<void> {
    return this.tpm.close();
  }
}

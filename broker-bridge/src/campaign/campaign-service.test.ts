import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../../common/clock.js';
import { decode } from '../../../common/protocol/messages.js';
import { Topics } from '../../../common/protocol/topics.js';
import { LevelInventory } from '../inventory/level-inventory.js';
import { recordEnrolledDevice } from '../inventory/test-records.js';
import { decodeOperatorReply, encodeOperatorAccepted } from '../../../common/protocol/operator.js';
import { campaignExecutors } from './campaign-executors.js';
import { CampaignService } from './campaign-service.js';

/**
 * The campaign engine on a real LevelDB inventory, with the clock and the devices' reports driven by
 * the test: what it publishes (retained device commands) is captured and decoded as a device would.
 */
const topics = new Topics('fleet/v1');

interface Sent {
  deviceId: string;
  commandId: string;
  body: { command: string; jitterSec: number; expiresAt: number; by: string } | undefined;
}

describe('CampaignService (real LevelDB inventory)', () => {
  let dir: string;
  let inv: LevelInventory;
  let clock: ManualClock;
  let sent: Sent[];
  let failPublish: boolean;
  let svc: CampaignService;

  const publish = async (topic: string, payload: Buffer, opts: { qos: 0 | 1; retain: boolean }) => {
    if (failPublish) throw Object.assign(new Error('broker down'), { code: 'TRANSPORT_NOT_CONNECTED' });
    expect(opts).toEqual({ qos: 1, retain: true });
    const deviceId = topics.parseDevice(topic)!.deviceId;
    if (payload.length === 0) {
      sent.push({ deviceId, commandId: '', body: undefined });
      return;
    }
    const m = decode('command', payload);
    sent.push({ deviceId, commandId: m.requestId, body: m.body });
  };
  const service = (o: { restartGraceMs?: number } = {}) => new CampaignService({ store: inv, clock, topics, publish, ...o });
  let serials = 0;
  /** A rotation certificate issued now by the bridge's clock (what a device's report names), recorded as the rotation service does. */
  const issue = async (deviceId: string): Promise<string> => {
    const serial = `r${++serials}`;
    const at = clock.now();
    const previousSerial = inv.getDevice(deviceId)!.certSerial!;
    await inv.completeRotation({
      deviceId, requestId: `rot-${serial}`, previousSerial, at, audit: [],
      certificate: { serial, deviceId, notBefore: at, notAfter: at + 86_400_000, issuedAt: at, pem: 'PEM', keySpkiHash: `k-${serial}` },
      response: { requestId: `rot-${serial}`, deviceId, topic: 't', payload: 'cA==', storedAt: at },
    });
    return serial;
  };
  /** The device's report as ingested: `rotated` names its new certificate; a broker-refused rotation names the refused one. */
  const report = async (deviceId: string, type: 'rotated' | 'rotation_failed', code?: string) =>
    svc.onDeviceEvent(deviceId, {
      type,
      receivedAt: clock.now(),
      details: type === 'rotated' ? { serial: await issue(deviceId) } : { code: code ?? 'TRANSPORT_TLS_REFUSED', serial: inv.getDevice(deviceId)!.certSerial!, previousSerial: await issue(deviceId) },
    });
  const commandsOfWave = (wave: number) => inv.listCampaignDevices('c1').filter((d) => d.wave === wave).map((d) => d.deviceId).sort();

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'campaign-'));
    inv = new LevelInventory(join(dir, 'inv'));
    await inv.open();
    clock = new ManualClock(Date.UTC(2026, 11, 1));
    sent = [];
    failPublish = false;
    for (let i = 0; i < 20; i++) await recordEnrolledDevice(inv, { deviceId: `dev-${String(i).padStart(2, '0')}`, serial: `s${i}`, at: clock.now(), metadata: { owner: i < 10 ? 'acme' : 'globex', model: 'gw1' } });
    await recordEnrolledDevice(inv, { deviceId: 'never-enrolled', at: clock.now() });
    svc = service();
  });

  afterEach(async () => {
    await svc.stop();
    await inv.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('plans waves over the selected devices, sends nothing before the start, and rolls wave by wave to completed', async () => {
    const c = await svc.create({ campaignId: 'c1', kind: 'rotate', selector: {}, waves: [5, 25, 100], gates: { windowSec: 60 }, jitterSec: 10 }, 'alice');
    expect(c).toMatchObject({ state: 'planned', wave: -1, devices: 20, excluded: 0 });
    expect(c.waves.map((w) => w.size)).toEqual([1, 4, 15]);
    expect(sent).toEqual([]);
    // Not enrolled: never selected.
    expect(inv.listCampaignDevices('c1').map((d) => d.deviceId)).not.toContain('never-enrolled');

    const started = await svc.startCampaign('c1', 'alice');
    expect(started).toMatchObject({ state: 'running', wave: 0 });
    expect(sent.map((s) => s.deviceId)).toEqual(commandsOfWave(0));
    expect(sent[0]!.body).toMatchObject({ command: 'rotate-now', jitterSec: 10, by: 'alice', expiresAt: clock.now() + (60 + 86_400) * 1000 });

    for (const wave of [0, 1, 2]) {
      const ids = commandsOfWave(wave);
      expect(new Set(sent.slice(-ids.length).map((s) => s.deviceId))).toEqual(new Set(ids));
      clock.advance(1000);
      for (const id of ids) await report(id, 'rotated');
    }
    const done = svc.status('c1');
    expect(done).toMatchObject({ state: 'completed', succeeded: 20, failed: 0 });
    expect(done.waves.map((w) => w.gate)).toEqual(['passed', 'passed', 'passed']);
    // Every device got exactly one command, each with its own id.
    expect(sent).toHaveLength(20);
    expect(new Set(sent.map((s) => s.commandId)).size).toBe(20);
    const types = (await inv.listAudit()).map((a) => a.type).filter((t) => t.startsWith('campaign.') && t !== 'campaign.rotate-now');
    expect(types).toEqual(['campaign.created', 'campaign.started', 'campaign.wave-started', 'campaign.wave-passed', 'campaign.wave-started', 'campaign.wave-passed', 'campaign.wave-started', 'campaign.wave-passed', 'campaign.completed']);
    expect((await inv.listAudit({ type: 'campaign.rotate-now' })).length).toBe(20);
  });

  it('a failure in the canary wave trips its gate at once: paused with the reason, and no further device gets a command', async () => {
    await svc.create({ campaignId: 'c1', kind: 'rotate', selector: {}, waves: [10, 100], gates: { windowSec: 600, maxFailures: 0 } }, 'alice');
    await svc.startCampaign('c1', 'alice');
    const canary = commandsOfWave(0);
    expect(canary).toHaveLength(2);
    await report(canary[0]!, 'rotation_failed', 'TRANSPORT_TLS_REFUSED');
    const s = svc.status('c1');
    expect(s).toMatchObject({ state: 'paused', wave: 0, failed: 1, failureCodes: { TRANSPORT_TLS_REFUSED: 1 } });
    expect(s.paused).toMatchObject({ by: 'gate' });
    expect(s.paused!.reason).toMatch(/wave 1 gate tripped: 1 failed, more than the 0 allowed \(TRANSPORT_TLS_REFUSED×1\)/);
    expect(s.waves[0]).toMatchObject({ gate: 'tripped', succeeded: 0, failed: 1, pending: 1 });
    // Time passes, the second canary succeeds: the campaign stays paused; the other 18 never hear of it.
    clock.advance(3_600_000);
    await report(canary[1]!, 'rotated');
    await svc.tick();
    expect(svc.status('c1').state).toBe('paused');
    expect(sent.map((x) => x.deviceId).sort()).toEqual(canary);
    expect((await inv.listAudit({ type: 'campaign.gate-tripped' }))[0]!.details).toMatchObject({ campaign: 'c1', wave: 0, failed: 1 });

    // The operator accepts the wave: the next wave starts.
    const resumed = await svc.resume('c1', 'bob');
    expect(resumed).toMatchObject({ state: 'running', wave: 1 });
    expect(resumed.waves[0]!.gate).toBe('accepted');
    expect(sent).toHaveLength(20);
  });

  it('decides at the window: too few heard from trips the gate; a later success flips a failure', async () => {
    await svc.create({ campaignId: 'c1', kind: 'rotate', selector: { owner: 'acme' }, waves: [50, 100], gates: { windowSec: 60, maxFailures: 5, minHeardFrom: 0.8, minSuccessRate: 0.5 } }, 'alice');
    expect(svc.status('c1').devices).toBe(10);
    await svc.startCampaign('c1', 'alice');
    const wave = commandsOfWave(0);
    expect(wave).toHaveLength(5);
    await report(wave[0]!, 'rotation_failed');
    await report(wave[0]!, 'rotated'); // the agent's retry succeeded
    await report(wave[1]!, 'rotated');
    await report(wave[2]!, 'rotated');
    await svc.tick();
    expect(svc.status('c1')).toMatchObject({ state: 'running', wave: 0, succeeded: 3, failed: 0 });
    clock.advance(60_000);
    await svc.tick();
    const s = svc.status('c1');
    expect(s.state).toBe('paused');
    expect(s.waves[0]!.reason).toBe('heard from 3 of 5 devices within 60 s (60%), below the 80% required');
  });

  it('a bridge restarted mid-wave resumes: unanswered commands go out again with the same ids, and the campaign completes', async () => {
    await svc.create({ campaignId: 'c1', kind: 'rotate', selector: { deviceIds: ['dev-00', 'dev-01', 'dev-02', 'dev-03', 'nope', 'never-enrolled'] }, waves: [50, 100], gates: { windowSec: 60 } }, 'alice');
    expect(svc.status('c1')).toMatchObject({ devices: 4, excluded: 2 });
    await svc.startCampaign('c1', 'alice');
    const wave0 = commandsOfWave(0);
    const first = new Map(sent.map((s) => [s.deviceId, s.commandId]));
    await report(wave0[0]!, 'rotated');
    // The bridge stops (its process ends) and comes back on the same inventory.
    await svc.stop();
    await inv.close();
    inv = new LevelInventory(join(dir, 'inv'));
    await inv.open();
    sent = [];
    svc = service();
    await svc.start();
    expect(svc.status('c1')).toMatchObject({ state: 'running', wave: 0, succeeded: 1 });
    expect(sent.map((s) => [s.deviceId, s.commandId])).toEqual([[wave0[1]!, first.get(wave0[1]!)]]);
    await report(wave0[1]!, 'rotated');
    for (const id of commandsOfWave(1)) await report(id, 'rotated');
    expect(svc.status('c1')).toMatchObject({ state: 'completed', succeeded: 4 });
  });

  it('a command that could not be published is sent on a later tick; an event from before the command does not count', async () => {
    await svc.create({ campaignId: 'c1', kind: 'rotate', selector: { deviceIds: ['dev-05'] }, waves: [100], gates: { windowSec: 60 } }, 'alice');
    failPublish = true;
    clock.advance(1000);
    const started = await svc.startCampaign('c1', 'alice');
    expect(started.waves[0]).toMatchObject({ sent: 1, pending: 1 });
    expect(sent).toEqual([]);
    // An old rotated event (received before the command) is not an outcome.
    await svc.onDeviceEvent('dev-05', { type: 'rotated', receivedAt: clock.now() - 500, details: { serial: 'x' } });
    expect(svc.status('c1').succeeded).toBe(0);
    failPublish = false;
    await svc.tick();
    expect(sent.map((s) => s.deviceId)).toEqual(['dev-05']);
    await svc.tick();
    expect(sent).toHaveLength(1);
  });

  it('pause stops further waves until resumed; abort withdraws the unanswered commands', async () => {
    await svc.create({ campaignId: 'c1', kind: 'rotate', selector: { model: 'gw1' }, waves: [10, 100], gates: { windowSec: 60 } }, 'alice');
    await svc.startCampaign('c1', 'alice');
    await svc.pause('c1', 'bob');
    for (const id of commandsOfWave(0)) await report(id, 'rotated');
    expect(svc.status('c1')).toMatchObject({ state: 'paused', wave: 0, succeeded: 2 });
    expect(svc.status('c1').paused).toMatchObject({ by: 'bob', reason: 'paused by the operator' });
    expect(sent).toHaveLength(2);
    const resumed = await svc.resume('c1', 'bob');
    expect(resumed).toMatchObject({ state: 'running', wave: 1 });
    expect(resumed.waves[0]!.gate).toBe('passed');
    expect(sent).toHaveLength(20);
    await report(commandsOfWave(1)[0]!, 'rotated');
    const aborted = await svc.abort('c1', 'bob');
    expect(aborted.state).toBe('aborted');
    const withdrawn = sent.filter((s) => s.body === undefined).map((s) => s.deviceId).sort();
    expect(withdrawn).toEqual(commandsOfWave(1).slice().sort().filter((id) => id !== commandsOfWave(1)[0]));
    await expect(svc.resume('c1', 'bob')).rejects.toMatchObject({ code: 'CAMPAIGN_STATE' });
  });

  it('refuses bad plans and wrong states with codes', async () => {
    await expect(svc.create({ kind: 'rotate', selector: { owner: 'nobody' } }, 'a')).rejects.toMatchObject({ code: 'CAMPAIGN_EMPTY' });
    await expect(svc.create({ kind: 'rotate', selector: {}, waves: [50, 40, 100] }, 'a')).rejects.toMatchObject({ code: 'CAMPAIGN_INVALID' });
    await expect(svc.create({ kind: 'rotate', selector: {}, waves: [10, 50] }, 'a')).rejects.toMatchObject({ code: 'CAMPAIGN_INVALID' });
    await expect(svc.create({ kind: 'rotate', selector: {}, gates: { minSuccessRate: 1.5 } }, 'a')).rejects.toMatchObject({ code: 'CAMPAIGN_INVALID' });
    await expect(svc.create({ kind: 'ca-rollover', selector: {} }, 'a')).rejects.toMatchObject({ code: 'CAMPAIGN_KIND_UNSUPPORTED' });
    const c = await svc.create({ kind: 'rotate', selector: { samplePercent: 25 } }, 'a');
    expect(c.campaignId).toMatch(/^c-2026-12-01-[0-9a-f]{8}$/);
    expect(c.devices).toBe(5);
    await expect(svc.create({ campaignId: c.campaignId, kind: 'rotate', selector: {} }, 'a')).rejects.toMatchObject({ code: 'CAMPAIGN_EXISTS' });
    await expect(svc.pause(c.campaignId, 'a')).rejects.toMatchObject({ code: 'CAMPAIGN_STATE' });
    await expect(svc.startCampaign('missing', 'a')).rejects.toMatchObject({ code: 'CAMPAIGN_NOT_FOUND' });
    expect(svc.list().map((x) => x.campaignId)).toEqual([c.campaignId]);
  });

  it('counts only answers to its command: an older certificate or a resent refusal is not one; a first-arrival refusal is', async () => {
    await svc.create({ campaignId: 'c1', kind: 'rotate', selector: { deviceIds: ['dev-00', 'dev-01', 'dev-02'] }, waves: [100], gates: { windowSec: 60, maxFailures: 5, minHeardFrom: 0, minSuccessRate: 0 } }, 'alice');
    const older = await issue('dev-00'); // a rotation the device did before the campaign
    clock.advance(1000);
    await svc.startCampaign('c1', 'alice');
    clock.advance(1000);
    // dev-00's outbox resends its old `rotated` (ack lost): it names a certificate issued before the command.
    await svc.onDeviceEvent('dev-00', { type: 'rotated', receivedAt: clock.now(), details: { serial: older }, duplicate: true });
    // dev-01's outbox resends an old refusal by the fleet (no certificate): not taken.
    await svc.onDeviceEvent('dev-01', { type: 'rotation_failed', receivedAt: clock.now(), details: { code: 'RATE_LIMITED', serial: 's1' }, duplicate: true });
    // A report naming another device's certificate is not taken either.
    await svc.onDeviceEvent('dev-02', { type: 'rotated', receivedAt: clock.now(), details: { serial: await issue('dev-05') } });
    expect(svc.status('c1')).toMatchObject({ succeeded: 0, failed: 0 });
    // First arrivals that answer the command count.
    await svc.onDeviceEvent('dev-01', { type: 'rotation_failed', receivedAt: clock.now(), details: { code: 'RATE_LIMITED', serial: 's1' } });
    await report('dev-00', 'rotated');
    await report('dev-02', 'rotated');
    expect(svc.status('c1')).toMatchObject({ state: 'completed', succeeded: 2, failed: 1, failureCodes: { RATE_LIMITED: 1 } });
  });

  it('a bridge back after the window closed waits a grace for the reports the outboxes held; revoked devices leave the count', async () => {
    await svc.create({ campaignId: 'c1', kind: 'rotate', selector: { deviceIds: ['dev-00', 'dev-01', 'dev-02', 'dev-03'] }, waves: [100], gates: { windowSec: 60, minHeardFrom: 1, minSuccessRate: 1 } }, 'alice');
    await svc.startCampaign('c1', 'alice');
    await svc.stop();
    clock.advance(10 * 60_000); // the bridge was down for 10 minutes, far past the window
    svc = service({ restartGraceMs: 30_000 });
    await svc.start();
    expect(svc.status('c1')).toMatchObject({ state: 'running', wave: 0 });
    await report('dev-00', 'rotated');
    await report('dev-01', 'rotated');
    // dev-03 is revoked meanwhile: it will never report, and does not count against the wave.
    await inv.revokeDevice('dev-03', 'keyCompromise', clock.now());
    clock.advance(29_000);
    await svc.tick();
    expect(svc.status('c1').state).toBe('running');
    await report('dev-02', 'rotated');
    const s = svc.status('c1');
    expect(s).toMatchObject({ state: 'completed', succeeded: 3 });
    expect(s.waves[0]).toMatchObject({ skipped: 1, gate: 'passed' });
  });

  it('a grace does not hold back a gate that too many failures trip', async () => {
    await svc.create({ campaignId: 'c1', kind: 'rotate', selector: { deviceIds: ['dev-00', 'dev-01'] }, waves: [100], gates: { windowSec: 60 } }, 'alice');
    await svc.startCampaign('c1', 'alice');
    await svc.stop();
    svc = service();
    await svc.start();
    await report('dev-00', 'rotation_failed');
    expect(svc.status('c1').state).toBe('paused');
  });

  it('abort leaves a newer command in place, and retries a withdrawal the broker did not take', async () => {
    await svc.create({ campaignId: 'c1', kind: 'rotate', selector: { deviceIds: ['dev-00', 'dev-01', 'dev-02'] }, waves: [100], gates: { windowSec: 60 } }, 'alice');
    await svc.startCampaign('c1', 'alice');
    clock.advance(1000);
    // An operator sent dev-01 its own command since.
    await inv.appendAudit([{ at: clock.now(), type: 'operator.reattest', deviceId: 'dev-01', details: { operator: 'bob' } }]);
    sent = [];
    failPublish = true;
    expect((await svc.abort('c1', 'alice')).state).toBe('aborted');
    expect(sent).toEqual([]);
    failPublish = false;
    await svc.tick();
    expect(sent.map((x) => [x.deviceId, x.body]).sort()).toEqual([['dev-00', undefined], ['dev-02', undefined]]);
    await svc.tick();
    expect(sent).toHaveLength(2);
  });

  it('refuses a timing in which devices could not act within the window', async () => {
    await expect(svc.create({ kind: 'rotate', selector: {}, gates: { windowSec: 60 }, jitterSec: 300 }, 'a')).rejects.toMatchObject({ code: 'CAMPAIGN_INVALID' });
    await expect(svc.create({ kind: 'rotate', selector: {}, gates: { windowSec: 600 }, jitterSec: 30, commandTtlSec: 300 }, 'a')).rejects.toMatchObject({ code: 'CAMPAIGN_INVALID' });
    const ok = await svc.create({ kind: 'rotate', selector: { deviceIds: ['dev-00', 'dev-01', 'dev-02'] } }, 'a');
    // Three devices, four default waves: three waves, the last labelled 100%.
    expect(ok.waves.map((w) => [w.size, w.percent])).toEqual([[1, 1], [1, 10], [1, 100]]);
  });

  it('a device code such as `constructor` is counted like any other, and the reply still passes its schema', async () => {
    await svc.create({ campaignId: 'c1', kind: 'rotate', selector: { deviceIds: ['dev-00', 'dev-01'] }, waves: [100], gates: { windowSec: 60, maxFailures: 5 } }, 'alice');
    await svc.startCampaign('c1', 'alice');
    await svc.onDeviceEvent('dev-00', { type: 'rotation_failed', receivedAt: clock.now(), details: { code: 'constructor', serial: 's0' } });
    await svc.onDeviceEvent('dev-01', { type: 'rotation_failed', receivedAt: clock.now(), details: { code: 'not a code!', serial: 's1' } });
    expect(svc.status('c1').failureCodes).toEqual({ constructor: 1, 'not a code!': 1 });
    const status = campaignExecutors(svc)['campaign-status']!;
    const reply = encodeOperatorAccepted('campaign-status', 'r1', await status({ v: 1, requestId: 'r1', campaignId: 'c1' }, { operatorId: 'alice' }));
    const decoded = decodeOperatorReply('campaign-status', reply);
    expect(decoded).toMatchObject({ ok: true, campaign: { failureCodes: { constructor: 1, OTHER: 1 } } });
  });
});

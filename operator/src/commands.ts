import { existsSync, readFileSync } from 'node:fs';
import { checkTrustBundle, parseBootstrap } from '../../agent/src/config.js';
import {
  OPERATOR_DEVICE_COMMAND,
  OPERATOR_HISTORY_MAX,
  OPERATOR_PAGE_MAX,
  OPERATOR_REVOKE_REASONS,
  OPERATOR_STATE_FILTERS,
  OPERATOR_TOKEN_TTL,
  type OperatorCertificateRow,
  type OperatorCommand,
  type OperatorDeviceRow,
  type OperatorRequestOf,
} from '../../common/protocol/operator.js';
import { isDeviceId } from '../../common/protocol/topics.js';
import { writeBootstrapFile, type BootstrapConfig } from '../../provisioning/src/bootstrap.js';
import { CAMPAIGN_COMMANDS } from './campaign-commands.js';
import type { OperatorClient } from './client.js';
import { parseCount, parseSeconds } from './duration.js';
import { OperatorCliError, usage } from './errors.js';
import type { Column, View } from './output.js';
import type { ConnectionSettings } from './settings.js';

/**
 * The operator commands: their options, their checks (all before anything is sent: a bad option
 * never costs a token or a device command) and how each reply is shown.
 */
export interface CommandOption {
  readonly type: 'string' | 'boolean';
  readonly arg?: string;
  readonly help: string;
}

export interface ParsedCommand {
  readonly values: Readonly<Record<string, string | boolean | undefined>>;
  /** The positional device id, for commands that take one. */
  readonly deviceId: string | undefined;
  /** The positional campaign id, for campaign commands that take one. */
  readonly campaignId?: string;
}

export interface CommandDef {
  readonly name: OperatorCommand;
  readonly synopsis: string;
  readonly summary: string;
  /** 'device': exactly one device id; 'optional-device': at most one; 'campaign': exactly one campaign id; 'none'. */
  readonly positional: 'device' | 'optional-device' | 'campaign' | 'none';
  readonly options: Readonly<Record<string, CommandOption>>;
  /** Validates the options (throws OPERATOR_USAGE and the like) and returns the work to do once connected. */
  prepare(p: ParsedCommand, s: ConnectionSettings): (client: OperatorClient) => Promise<View>;
}

const str = (p: ParsedCommand, k: string): string | undefined => p.values[k] as string | undefined;
const device = (p: ParsedCommand): string => p.deviceId!;
const opt = <K extends string, V>(k: K, v: V | undefined): { [P in K]?: V } => (v === undefined ? {} : ({ [k]: v } as { [P in K]: V }));
const DAY_MAX = 3650;

const deviceColumns: readonly Column<OperatorDeviceRow>[] = [
  { header: 'DEVICE', value: (r) => r.deviceId },
  { header: 'STATE', value: (r) => r.state },
  { header: 'AGENT', value: (r) => r.agentState },
  { header: 'ONLINE', value: (r) => (r.online === undefined ? undefined : r.online ? 'yes' : 'no') },
  { header: 'OWNER', value: (r) => r.owner },
  { header: 'MODEL', value: (r) => r.model },
  { header: 'SERIAL', value: (r) => r.certSerial },
  { header: 'EXPIRES', value: (r) => r.certNotAfter, time: true },
  { header: 'LAST SEEN', value: (r) => r.lastSeenAt, time: true },
];

const certificateColumns: readonly Column<OperatorCertificateRow>[] = [
  { header: 'SERIAL', value: (r) => r.serial },
  { header: 'KIND', value: (r) => r.kind },
  { header: 'STATE', value: (r) => r.state },
  { header: 'CURRENT', value: (r) => (r.current ? 'yes' : '') },
  { header: 'NOT BEFORE', value: (r) => r.notBefore, time: true },
  { header: 'NOT AFTER', value: (r) => r.notAfter, time: true },
  { header: 'ISSUED', value: (r) => r.issuedAt, time: true },
  { header: 'REVOKED', value: (r) => r.revokedAt, time: true },
  { header: 'REASON', value: (r) => r.revocationReason },
];

interface HistoryLine {
  readonly time: number;
  readonly source: 'fleet' | 'device';
  readonly type: string;
  readonly details: Readonly<Record<string, string | number | boolean>> | undefined;
}
const historyColumns: readonly Column<HistoryLine>[] = [
  { header: 'TIME', value: (r) => r.time, time: true },
  { header: 'SOURCE', value: (r) => r.source },
  { header: 'TYPE', value: (r) => r.type },
  { header: 'DETAILS', value: (r) => (r.details ? Object.entries(r.details).map(([k, v]) => `${k}=${v}`).join(' ') : undefined) },
];

const deviceCommandOptions = {
  jitter: { type: 'string', arg: 'DURATION', help: `the device acts at a random point within this (default 0, at most ${OPERATOR_DEVICE_COMMAND.maxJitterSec / 3600}h)` },
  'expires-in': { type: 'string', arg: 'DURATION', help: 'the device ignores the command after this (default 1d)' },
} as const;

function deviceCommand(name: 'rotate-now' | 'reattest', summary: string): CommandDef {
  return {
    name,
    synopsis: `${name} DEVICE [--jitter DURATION] [--expires-in DURATION]`,
    summary,
    positional: 'device',
    options: deviceCommandOptions,
    prepare(p) {
      const jitter = str(p, 'jitter');
      const expires = str(p, 'expires-in');
      const body: Omit<OperatorRequestOf<'rotate-now'>, 'v' | 'requestId'> = {
        deviceId: device(p),
        ...opt('jitterSec', jitter === undefined ? undefined : parseSeconds(jitter, '--jitter', { min: 0, max: OPERATOR_DEVICE_COMMAND.maxJitterSec })),
        ...opt('ttlSec', expires === undefined ? undefined : parseSeconds(expires, '--expires-in', { min: OPERATOR_DEVICE_COMMAND.minTtlSec, max: OPERATOR_DEVICE_COMMAND.maxTtlSec })),
      };
      return async (client) => {
        const r = await client.call(name, body);
        return {
          kind: 'record',
          fields: [
            ['deviceId', r.deviceId],
            ['command', r.command],
            ['commandId', r.commandId],
            ['issuedAt', r.issuedAt, { time: true }],
            ['expiresAt', r.expiresAt, { time: true }],
            ['jitterSec', r.jitterSec],
          ],
          json: { deviceId: r.deviceId, command: r.command, commandId: r.commandId, issuedAt: r.issuedAt, expiresAt: r.expiresAt, jitterSec: r.jitterSec, by: r.by },
        };
      };
    },
  };
}

/** PEM certificates in a file, each block as its own string. */
function pemCertificates(text: string): string[] {
  return [...text.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)].map((m) => `${m[0]}\n`);
}

/**
 * The bootstrap file a re-issued token goes into, checked before the token is asked for (so a typo
 * in a URL never burns one): everything the agent will check, with a placeholder token.
 */
function bootstrapPlan(p: ParsedCommand, s: ConnectionSettings): { path: string; config: Omit<BootstrapConfig, 'token' | 'tokenExpiresAt'> } | undefined {
  const path = str(p, 'bootstrap-out');
  const bootstrapOnly = ['enroll-url', 'device-url', 'tcti', 'trust-bundle'].filter((k) => p.values[k] !== undefined);
  if (path === undefined) {
    if (bootstrapOnly.length > 0) throw usage(`--${bootstrapOnly[0]} is for --bootstrap-out`);
    return undefined;
  }
  const enrollUrl = str(p, 'enroll-url') ?? (() => { throw usage('--bootstrap-out needs --enroll-url mqtts://host:port (the enrollment listener)'); })();
  if (existsSync(path) && p.values['force'] !== true) throw new OperatorCliError('OPERATOR_OUTPUT_EXISTS', `${path} exists; give --force to replace it`);
  const bundleFile = str(p, 'trust-bundle');
  let trustBundle = pemCertificates(s.caPem);
  if (bundleFile !== undefined) {
    try {
      trustBundle = pemCertificates(readFileSync(bundleFile, 'utf8'));
    } catch (e) {
      throw new OperatorCliError('OPERATOR_FILE_UNREADABLE', `cannot read trust bundle ${bundleFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }
  const config = { v: 1 as const, deviceId: device(p), tcti: str(p, 'tcti') ?? 'device:/dev/tpmrm0', baseTopic: s.baseTopic, enrollUrl, deviceUrl: str(p, 'device-url') ?? s.broker, trustBundle };
  try {
    checkTrustBundle(parseBootstrap({ ...config, token: 'x'.repeat(43), tokenExpiresAt: 0 }));
  } catch (e) {
    throw usage(`the bootstrap file would not be valid: ${(e as Error).message}`);
  }
  return { path, config };
}

const DEVICE_COMMANDS: readonly CommandDef[] = [
  {
    name: 'devices',
    synopsis: 'devices [--owner O] [--model M] [--state S] [--expiring-within DAYS] [--stale DURATION] [--page-size N]',
    summary: 'List devices (every page), filtered; all filters must hold.',
    positional: 'none',
    options: {
      owner: { type: 'string', arg: 'O', help: 'the device metadata "owner" equals O' },
      model: { type: 'string', arg: 'M', help: 'the device metadata "model" equals M' },
      state: { type: 'string', arg: 'S', help: `registered, enrolled, revoked, or the agent's reported state (${OPERATOR_STATE_FILTERS.filter((x) => !['registered', 'enrolled', 'revoked'].includes(x)).join(', ')})` },
      'expiring-within': { type: 'string', arg: 'DAYS', help: 'enrolled devices whose certificate ends within DAYS days (expired ones included)' },
      stale: { type: 'string', arg: 'DURATION', help: 'enrolled devices not heard from for DURATION (3600, 90m, 12h, 7d)' },
      'page-size': { type: 'string', arg: 'N', help: `devices per request (default and max ${OPERATOR_PAGE_MAX})` },
    },
    prepare(p) {
      const state = str(p, 'state');
      if (state !== undefined && !(OPERATOR_STATE_FILTERS as readonly string[]).includes(state)) throw usage(`--state must be one of ${OPERATOR_STATE_FILTERS.join(', ')}`);
      const expiring = str(p, 'expiring-within');
      const stale = str(p, 'stale');
      const pageSize = str(p, 'page-size');
      const filter = {
        ...opt('owner', str(p, 'owner')),
        ...opt('model', str(p, 'model')),
        ...opt('state', state as OperatorRequestOf<'devices'>['state']),
        ...opt('expiringWithinDays', expiring === undefined ? undefined : parseCount(expiring, '--expiring-within', { min: 0, max: DAY_MAX })),
        ...opt('staleSec', stale === undefined ? undefined : parseSeconds(stale, '--stale', { min: 1, max: 10 * 366 * 86_400 })),
        limit: pageSize === undefined ? OPERATOR_PAGE_MAX : parseCount(pageSize, '--page-size', { min: 1, max: OPERATOR_PAGE_MAX }),
      };
      for (const k of ['owner', 'model'] as const) if (filter[k] === '') throw usage(`--${k} must not be empty`);
      return async (client) => {
        const rows: OperatorDeviceRow[] = [];
        let cursor: string | undefined;
        for (;;) {
          const page = await client.call('devices', { ...filter, ...opt('cursor', cursor) });
          rows.push(...page.devices);
          if (page.nextCursor === undefined) break;
          if (cursor !== undefined && page.nextCursor <= cursor) throw new OperatorCliError('OPERATOR_REPLY_INVALID', 'the bridge sent a cursor that does not advance');
          cursor = page.nextCursor;
        }
        return { kind: 'list', columns: deviceColumns, rows, json: rows };
      };
    },
  },
  {
    name: 'device',
    synopsis: 'device DEVICE',
    summary: "One device: its record, its agent's last status and its current certificate (--json adds the PEM).",
    positional: 'device',
    options: {},
    prepare(p) {
      return async (client) => {
        const { device: d, certificate: c } = await client.call('device', { deviceId: device(p) });
        const st = d.status;
        return {
          kind: 'record',
          fields: [
            ['deviceId', d.deviceId],
            ['state', d.state],
            ...Object.entries(d.metadata).map(([k, v]) => [`metadata.${k}`, v] as const),
            ['ekKind', d.ekKind],
            ['ekPublicHash', d.ekPublicHash],
            ['registeredAt', d.registeredAt, { time: true }],
            ['enrolledAt', d.enrolledAt, { time: true }],
            ['reattestedAt', d.reattestedAt, { time: true }],
            ['lastRotationAt', d.lastRotationAt, { time: true }],
            ['revokedAt', d.revokedAt, { time: true }],
            ['revocationReason', d.revocationReason],
            ['lastSeenAt', d.lastSeenAt, { time: true }],
            ['online', d.online],
            ['status.state', st?.state],
            ['status.errorCode', st?.errorCode],
            ['status.agentVersion', st?.agentVersion],
            ['status.slot', st?.slot],
            ['status.lastRotationResult', st?.lastRotationResult],
            ['status.crlNumber', st?.crlNumber],
            ['certificate.serial', c?.serial],
            ['certificate.kind', c?.kind],
            ['certificate.state', c?.state],
            ['certificate.notBefore', c?.notBefore, { time: true }],
            ['certificate.notAfter', c?.notAfter, { time: true }],
          ],
          json: { device: d, ...opt('certificate', c) },
        };
      };
    },
  },
  {
    name: 'certificates',
    synopsis: 'certificates DEVICE [--limit N]',
    summary: 'The certificates of a device, newest first.',
    positional: 'device',
    options: { limit: { type: 'string', arg: 'N', help: `at most N (default and max ${OPERATOR_PAGE_MAX})` } },
    prepare(p) {
      const limit = str(p, 'limit');
      const body = { deviceId: device(p), ...opt('limit', limit === undefined ? undefined : parseCount(limit, '--limit', { min: 1, max: OPERATOR_PAGE_MAX })) };
      return async (client) => {
        const r = await client.call('certificates', body);
        return {
          kind: 'list',
          columns: certificateColumns,
          rows: r.certificates,
          json: { deviceId: r.deviceId, total: r.total, certificates: r.certificates },
          ...(r.total > r.certificates.length ? { note: `(the newest ${r.certificates.length} of ${r.total})` } : {}),
        };
      };
    },
  },
  {
    name: 'history',
    synopsis: 'history DEVICE [--limit N]',
    summary: "A device's audit events (fleet side) and device events (what its agent reported), oldest first.",
    positional: 'device',
    options: { limit: { type: 'string', arg: 'N', help: `the newest N entries (default and max ${OPERATOR_HISTORY_MAX})` } },
    prepare(p) {
      const limit = str(p, 'limit');
      const body = { deviceId: device(p), ...opt('limit', limit === undefined ? undefined : parseCount(limit, '--limit', { min: 1, max: OPERATOR_HISTORY_MAX })) };
      return async (client) => {
        const r = await client.call('history', body);
        const rows: HistoryLine[] = [
          ...r.audit.map((a) => ({ time: a.at, source: 'fleet' as const, type: a.type, details: a.details })),
          ...r.events.map((e) => ({ time: e.receivedAt, source: 'device' as const, type: e.type, details: e.details })),
        ].sort((a, b) => a.time - b.time);
        return {
          kind: 'list',
          columns: historyColumns,
          rows,
          json: { deviceId: r.deviceId, audit: r.audit, events: r.events, truncated: r.truncated },
          ...(r.truncated ? { note: '(older entries exist)' } : {}),
        };
      };
    },
  },
  {
    name: 'token-reissue',
    synopsis: 'token-reissue DEVICE [--ttl DURATION] [--bootstrap-out FILE --enroll-url URL [--device-url URL] [--tcti TCTI] [--trust-bundle PEM] [--force]]',
    summary:
      'A fresh one-time enrollment token for a registered device that has not enrolled; earlier tokens stop working.\n' +
      '  Printed once, or with --bootstrap-out written (0600) into a bootstrap file for the device and not printed.',
    positional: 'device',
    options: {
      ttl: { type: 'string', arg: 'DURATION', help: 'token lifetime (default: the bridge\'s, 7d)' },
      'bootstrap-out': { type: 'string', arg: 'FILE', help: 'write the device\'s bootstrap config here' },
      'enroll-url': { type: 'string', arg: 'URL', help: 'mqtts://host:port of the enrollment listener (with --bootstrap-out)' },
      'device-url': { type: 'string', arg: 'URL', help: 'mqtts://host:port of the device listener (default: --broker)' },
      tcti: { type: 'string', arg: 'TCTI', help: 'the device\'s TPM (default device:/dev/tpmrm0)' },
      'trust-bundle': { type: 'string', arg: 'PEM', help: 'roots the device trusts (default: --ca)' },
      force: { type: 'boolean', help: 'replace an existing --bootstrap-out file' },
    },
    prepare(p, s) {
      const ttl = str(p, 'ttl');
      const body = { deviceId: device(p), ...opt('ttlSec', ttl === undefined ? undefined : parseSeconds(ttl, '--ttl', { min: OPERATOR_TOKEN_TTL.minSec, max: OPERATOR_TOKEN_TTL.maxSec })) };
      const plan = bootstrapPlan(p, s);
      return async (client) => {
        const r = await client.call('token-reissue', body);
        if (plan) {
          writeBootstrapFile(plan.path, { ...plan.config, token: r.token, tokenExpiresAt: r.tokenExpiresAt });
          return {
            kind: 'record',
            fields: [['deviceId', r.deviceId], ['bootstrapFile', plan.path], ['tokenExpiresAt', r.tokenExpiresAt, { time: true }]],
            json: { deviceId: r.deviceId, bootstrapFile: plan.path, tokenExpiresAt: r.tokenExpiresAt },
          };
        }
        return {
          kind: 'record',
          fields: [['deviceId', r.deviceId], ['token', r.token], ['tokenExpiresAt', r.tokenExpiresAt, { time: true }]],
          json: { deviceId: r.deviceId, token: r.token, tokenExpiresAt: r.tokenExpiresAt },
        };
      };
    },
  },
  deviceCommand('rotate-now', 'Tell an enrolled device to rotate its key and certificate now (a retained device command).'),
  deviceCommand('reattest', 'Tell an enrolled device to re-attest with its TPM now (a retained device command).'),
  {
    name: 'revoke',
    synopsis: `revoke (DEVICE | --serial HEX) --reason R`,
    summary: `Revoke a device (all its certificates) or one certificate by serial. R: ${OPERATOR_REVOKE_REASONS.join(', ')}.`,
    positional: 'optional-device',
    options: {
      serial: { type: 'string', arg: 'HEX', help: 'a certificate serial (hex) instead of a device' },
      reason: { type: 'string', arg: 'R', help: 'an RFC 5280 reason (required)' },
    },
    prepare(p) {
      const reason = str(p, 'reason');
      if (reason === undefined) throw usage('--reason is required');
      if (!(OPERATOR_REVOKE_REASONS as readonly string[]).includes(reason)) throw usage(`--reason must be one of ${OPERATOR_REVOKE_REASONS.join(', ')}`);
      const serial = str(p, 'serial');
      if ((p.deviceId === undefined) === (serial === undefined)) throw usage('give a device id or --serial, not both');
      if (serial !== undefined && !/^[0-9A-Fa-f]{1,40}$/.test(serial)) throw usage('--serial must be 1 to 40 hex digits');
      const body = { ...opt('deviceId', p.deviceId), ...opt('serial', serial), reason: reason as OperatorRequestOf<'revoke'>['reason'] };
      return async (client) => {
        const r = await client.call('revoke', body);
        return {
          kind: 'record',
          fields: [['serials', r.serials.join(' ')], ['crlNumber', r.crlNumber], ['enforced', r.enforced]],
          json: { serials: r.serials, crlNumber: r.crlNumber, enforced: r.enforced },
        };
      };
    },
  },
];

export const COMMANDS: readonly CommandDef[] = [...DEVICE_COMMANDS, ...CAMPAIGN_COMMANDS];

/** Checks the positional argument against the command's need (OPERATOR_USAGE). */
export function positionalDevice(def: CommandDef, positionals: readonly string[]): string | undefined {
  if (def.positional === 'none' && positionals.length > 0) throw usage(`${def.name} takes no arguments, got ${JSON.stringify(positionals[0])}`);
  if (def.positional === 'device' && positionals.length !== 1) throw usage(`${def.name} needs exactly one device id`);
  if (positionals.length > 1) throw usage(`${def.name} takes at most one device id`);
  const id = positionals[0];
  if (id !== undefined && !isDeviceId(id)) throw usage(`${JSON.stringify(id)} is not a device id`);
  return id;
}

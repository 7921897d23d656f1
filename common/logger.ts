import pino, { type Logger } from 'pino';
import pinoPretty from 'pino-pretty';
import { CodedError } from './coded-error.js';

/**
 * The programs' logger (agent, bridge, station, operator). Logs go to stderr, so stdout stays for a
 * command's output (tables, `--json`). Format: human-readable (pino-pretty) when stderr is a terminal,
 * one JSON object per line otherwise (journald, files, log shippers); `LOG_FORMAT=json|pretty`
 * overrides the choice. Level: `LOG_LEVEL` (fatal, error, warn, info, debug, trace, silent), else the
 * program's configured level, else `info`.
 */
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export type LoggerErrorCode = 'LOG_LEVEL_INVALID' | 'LOG_FORMAT_INVALID';

export interface ProgramLoggerOptions {
  /** `program` field of every line. */
  readonly program: string;
  readonly version?: string;
  /** The level from the program's config; `LOG_LEVEL` wins over it. */
  readonly level?: string;
  readonly env?: NodeJS.ProcessEnv;
  /** Whether stderr is a terminal (default `process.stderr.isTTY`). */
  readonly tty?: boolean;
}

const isLevel = (v: string): v is LogLevel => (LOG_LEVELS as readonly string[]).includes(v);

/** The level to use; throws LOG_LEVEL_INVALID naming the bad value and where it came from. */
export function resolveLogLevel(env: NodeJS.ProcessEnv, configured?: string): LogLevel {
  const fromEnv = env.LOG_LEVEL;
  if (fromEnv !== undefined && fromEnv !== '') {
    if (!isLevel(fromEnv)) throw new CodedError<LoggerErrorCode>('LOG_LEVEL_INVALID', `LOG_LEVEL=${JSON.stringify(fromEnv)} is not one of ${LOG_LEVELS.join(', ')}`);
    return fromEnv;
  }
  if (configured === undefined) return 'info';
  if (!isLevel(configured)) throw new CodedError<LoggerErrorCode>('LOG_LEVEL_INVALID', `log level ${JSON.stringify(configured)} is not one of ${LOG_LEVELS.join(', ')}`);
  return configured;
}

/** `pretty` or `json`; throws LOG_FORMAT_INVALID for anything else in LOG_FORMAT. */
export function resolveLogFormat(env: NodeJS.ProcessEnv, tty: boolean): 'pretty' | 'json' {
  const f = env.LOG_FORMAT;
  if (f === undefined || f === '') return tty ? 'pretty' : 'json';
  if (f === 'pretty' || f === 'json') return f;
  throw new CodedError<LoggerErrorCode>('LOG_FORMAT_INVALID', `LOG_FORMAT=${JSON.stringify(f)} is not one of json, pretty`);
}

/** A logger writing to stderr (fd 2), synchronously, so nothing is lost when the process exits. */
export function createProgramLogger(o: ProgramLoggerOptions): Logger {
  const env = o.env ?? process.env;
  const level = resolveLogLevel(env, o.level);
  const format = resolveLogFormat(env, o.tty ?? process.stderr.isTTY === true);
  const base = { program: o.program, ...(o.version ? { version: o.version } : {}) };
  const stream =
    format === 'pretty'
      ? pinoPretty({ destination: 2, sync: true, colorize: o.tty ?? process.stderr.isTTY === true, ignore: 'pid,hostname,program,version', translateTime: 'SYS:HH:MM:ss.l' })
      : pino.destination({ dest: 2, sync: true });
  return pino({ base, level }, stream);
}

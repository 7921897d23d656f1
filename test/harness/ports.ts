import { freePorts } from '../../common/managed-process.js';

/**
 * Free TCP ports on 127.0.0.1 (and on 0.0.0.0, where a container's port proxy binds). Candidates are
 * drawn below Linux's ephemeral range, so the kernel never hands them out meanwhile; a start that still
 * loses a race is retried with new ports (backend.ts).
 */
export async function freePort(): Promise<number> {
  return freePorts(1);
}

/** Two consecutive free ports (swtpm's server port and its control port = server + 1); returns both. */
export async function freePortPair(): Promise<[number, number]> {
  const p = await freePorts(2);
  return [p, p + 1];
}

export { freePorts };

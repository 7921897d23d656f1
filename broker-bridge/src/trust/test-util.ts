import { join } from 'node:path';
import type { Clock } from '../../../common/clock.js';
import { createCa, type CaMaterial } from '../ca/ca-setup.js';

/**
 * Test-only: a root + issuing CA made by the fleet's own CA set-up (key file backend) in `dir/name`,
 * CNs `<name> root` / `<name> issuing CA`, valid from `clock.now()` (no backdating, so tests can step
 * right before and after the validity bounds).
 */
export function testFleetCa(dir: string, name: string, clock: Clock, opts: { issuingLifetimeSec?: number; trustDomain?: string } = {}): Promise<CaMaterial> {
  return createCa({
    outDir: join(dir, name),
    clock,
    trustDomain: opts.trustDomain ?? 'trust-bundle.test',
    root: { commonName: `${name} root` },
    issuing: { commonName: `${name} issuing CA` },
    backend: { kind: 'file', keyPath: join(dir, `${name}-issuing-key.pem`) },
    backdateSec: 0,
    ...(opts.issuingLifetimeSec ? { issuingLifetimeSec: opts.issuingLifetimeSec } : {}),
  });
}

import type { Scenario } from '../scenario.js';
import { agentCrash } from './agent-crash.js';
import { attacks } from './attacks.js';
import { bridgeOutagePastExpiry } from './bridge-outage-past-expiry.js';
import { brokerOutage } from './broker-outage.js';
import { clockSkew } from './clock-skew.js';
import { enrollStorm } from './enroll-storm.js';
import { revocation } from './revocation.js';
import { rotationCampaign } from './rotation-campaign.js';
import { rotationCanary } from './rotation-canary.js';
import { tpmFaults } from './tpm-faults.js';

/** Every scenario the simulator runs, by name. */
export const SCENARIOS: ReadonlyMap<string, Scenario> = new Map(
  [enrollStorm, rotationCampaign, rotationCanary, revocation, brokerOutage, bridgeOutagePastExpiry, agentCrash, clockSkew, attacks, tpmFaults].map((s) => [s.name, s]),
);

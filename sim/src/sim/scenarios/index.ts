import type { Scenario } from '../scenario.js';
import { brokerOutage } from './broker-outage.js';
import { enrollStorm } from './enroll-storm.js';
import { revocation } from './revocation.js';
import { rotationCampaign } from './rotation-campaign.js';

/** Every scenario the simulator runs, by name. */
export const SCENARIOS: ReadonlyMap<string, Scenario> = new Map([enrollStorm, rotationCampaign, revocation, brokerOutage].map((s) => [s.name, s]));

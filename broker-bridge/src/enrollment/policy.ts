import type { DeviceRecord } from '../inventory/inventory.js';

/**
 * Decides whether a fully verified request may be issued a certificate, and with which constraints.
 * A policy never signs and never sees key material; the issuance pipeline applies what it returns.
 * Called only after every cryptographic check has passed.
 */
export interface EnrollmentPolicy {
  decide(request: PolicyRequest): PolicyDecision;
}

export interface PolicyRequest {
  readonly kind: 'enroll' | 'rotate';
  readonly device: DeviceRecord;
  /** Manufacturer of the TPM, from the EK certificate chain that verified (subject CN of its root). */
  readonly manufacturer: string;
  readonly now: number;
}

export type PolicyDecision =
  | { readonly allow: true; readonly constraints: IssuanceConstraints }
  | { readonly allow: false; readonly reason: string };

export interface IssuanceConstraints {
  readonly lifetimeSec: number;
  /** notBefore = now − backdate, for devices whose clocks run a little behind. */
  readonly backdateSec: number;
  readonly trustDomain: string;
}

export interface DefaultPolicyConfig {
  readonly trustDomain: string;
  readonly lifetimeSec: number;
  readonly backdateSec: number;
  /** Device metadata keys that must be present (e.g. model). */
  readonly requiredMetadata?: readonly string[];
}

export class DefaultEnrollmentPolicy implements EnrollmentPolicy {
  readonly #config: DefaultPolicyConfig;
  constructor(config: DefaultPolicyConfig) {
    this.#config = config;
  }

  decide(request: PolicyRequest): PolicyDecision {
    for (const key of this.#config.requiredMetadata ?? []) {
      if (!request.device.metadata[key]) return { allow: false, reason: `device metadata lacks ${key}` };
    }
    return {
      allow: true,
      constraints: {
        lifetimeSec: this.#config.lifetimeSec,
        backdateSec: this.#config.backdateSec,
        trustDomain: this.#config.trustDomain,
      },
    };
  }
}

import { CodedError } from '../../../common/coded-error.js';
import type { CertificateRecord, DeviceRecord } from '../inventory/inventory.js';

/**
 * Decides whether a fully verified request may be issued a certificate, and with which constraints.
 * A policy never signs and never sees key material; the issuance pipeline applies what it returns.
 * Called only after every cryptographic check has passed.
 */
export interface EnrollmentPolicy {
  decide(request: PolicyRequest): PolicyDecision;
}

/**
 * What is being decided. 'enroll' (token) and 'reattest' (no token, EK and AK matched the inventory)
 * verified an EK certificate chain just now; 'rotate' did not present the EK again (the AK recorded at
 * enrollment certified the new key) and carries the certificate the device rotates from instead.
 */
export type PolicyRequest =
  | {
      readonly kind: 'enroll' | 'reattest';
      readonly device: DeviceRecord;
      /** Manufacturer of the TPM, from the EK certificate chain that verified (subject CN of its root). */
      readonly manufacturer: string;
      readonly now: number;
    }
  | {
      readonly kind: 'rotate';
      readonly device: DeviceRecord;
      /** The active certificate the rotation began from. */
      readonly current: CertificateRecord;
      readonly now: number;
    };

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
    // notAfter = notBefore + lifetime and notBefore = now - backdate: a lifetime not longer than the
    // backdate would issue certificates that are expired on arrival.
    if (!(config.lifetimeSec > config.backdateSec) || config.backdateSec < 0) {
      throw new CodedError('POLICY_CONFIG_INVALID', `certificate lifetime ${config.lifetimeSec}s must exceed the backdate ${config.backdateSec}s (validity counts from the backdated notBefore)`);
    }
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

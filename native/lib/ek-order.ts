import type { EkChoice, EkKind, Tpm } from './tpm.js';

/**
 * The EK a device attests with (docs/hardware.md): the kind the station verified and registered when
 * the bootstrap says, else ECC before RSA; within a kind, Tpm.ekChoice's index order. Null when the TPM
 * has no certificate for it. One order for the agent's status, its enrollment and the simulator's
 * registration, so that what a device reports is what it attests with.
 */
export async function preferredEk(tpm: Pick<Tpm, 'ekChoice'>, registered?: EkKind): Promise<EkChoice | null> {
  if (registered) return tpm.ekChoice(registered);
  return (await tpm.ekChoice('ecc')) ?? (await tpm.ekChoice('rsa'));
}

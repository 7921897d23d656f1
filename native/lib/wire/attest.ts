import { TpmReader } from './buffer-io.js';
import { ST_ATTEST } from './constants.js';
import { TpmWireError } from './errors.js';
import { readPcrSelection, type PcrSelection } from './pcr.js';

/** A parsed TPMS_ATTEST (Part 2 §10.12.12) of the kinds this project uses. */
export interface AttestCommon {
  /** Must be TPM_GENERATED_VALUE for anything the TPM produced itself. */
  readonly magic: number;
  readonly qualifiedSigner: Buffer;
  /** The qualifyingData the caller passed (nonce / challenge binding). */
  readonly extraData: Buffer;
  readonly clockInfo: { readonly clock: bigint; readonly resetCount: number; readonly restartCount: number; readonly safe: boolean };
  readonly firmwareVersion: bigint;
}

export type Attest =
  | (AttestCommon & { readonly type: 'certify'; readonly certified: { readonly name: Buffer; readonly qualifiedName: Buffer } })
  | (AttestCommon & { readonly type: 'quote'; readonly quoted: { readonly pcrSelect: PcrSelection[]; readonly pcrDigest: Buffer } });

export function parseAttest(buf: Buffer): Attest {
  const r = new TpmReader(buf);
  const magic = r.u32('magic');
  const type = r.u16('type');
  const common: AttestCommon = {
    magic,
    qualifiedSigner: r.tpm2b('qualifiedSigner'),
    extraData: r.tpm2b('extraData'),
    clockInfo: { clock: r.u64('clock'), resetCount: r.u32('resetCount'), restartCount: r.u32('restartCount'), safe: r.u8('safe') === 1 },
    firmwareVersion: r.u64('firmwareVersion'),
  };
  let out: Attest;
  if (type === ST_ATTEST.CERTIFY) {
    out = { ...common, type: 'certify', certified: { name: r.tpm2b('certify.name'), qualifiedName: r.tpm2b('certify.qualifiedName') } };
  } else if (type === ST_ATTEST.QUOTE) {
    out = { ...common, type: 'quote', quoted: { pcrSelect: readPcrSelection(r), pcrDigest: r.tpm2b('quote.pcrDigest') } };
  } else {
    throw new TpmWireError('TPM_WIRE_UNSUPPORTED', `unsupported attestation type 0x${type.toString(16)}`);
  }
  r.expectEnd('TPMS_ATTEST');
  return out;
}

// Public surface of native/: the Tpm interface and its ESAPI implementation, errors, EK certificate
// verification, the TPM wire format + software crypto the fleet side verifies with, and sd_notify.
export type * from './tpm.js';
export { NativeTpm, DEFAULT_SRK_HANDLE } from './native-tpm.js';
export { TpmError, codeForRc, rcSubject, type TpmErrorCode, type TssLayer } from './tpm-error.js';
export { verifyEkCertificate, EkCertificateError, parseCertificates, type EkTrustStore, type VerifiedEkCertificate } from './ek-certificate.js';
export * from './wire/public.js';
export * from './wire/templates.js';
export * from './wire/attest.js';
export * from './wire/signature.js';
export * from './wire/pcr.js';
export * from './wire/constants.js';
export { TpmWireError, type TpmWireErrorCode } from './wire/errors.js';
export { nativeServiceNotifier, SdNotifyError, type SdNotifyErrorCode, type ServiceNotifier } from './sd-notify.js';

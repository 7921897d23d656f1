// The CA module's hot-path API. One-time set-up (createCa/importCa/openBackend) lives in './ca-setup.js'
// and is imported from there on purpose: it loads @peculiar/x509, which the issuing path does not need.
export type { CaBackend, SignRequest, SignResponse } from './ca-backend.js';
export { CaError, isCaError, type CaErrorCode } from './errors.js';
export { FileKeyCa, type FileKeyCreateRequest, type FileKeyOpenRequest } from './file-key-ca.js';
export { Pkcs11Ca, type Pkcs11CaMetrics, type Pkcs11CaOpenRequest } from './pkcs11-ca.js';
export { parseIssuingCa, keyIdentifier, type IssuingCaInfo } from './ca-cert.js';
export { DEVICE_ID_PATTERN, TRUST_DOMAIN_PATTERN, spiffeIdFor } from './device-profile.js';
export { CertificateIssuer, type CertificateIssuerOptions, type IssueRequest, type IssueResponse } from './issuer.js';
export { parseAndVerifyCsr, DEFAULT_CSR_MAX_BYTES, type CsrParseOptions, type VerifiedCsr } from './csr.js';
export { CrlSigner, type CrlRequest, type CrlResponse, type RevocationReason, type RevokedCertificate } from './crl.js';
export { toPem, pemBlocks } from '../../../common/der.js';

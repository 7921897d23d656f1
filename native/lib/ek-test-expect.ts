import { expect } from 'vitest';
import { EkCertificateError, type EkCertificateErrorCode } from './ek-certificate.js';

/**
 * FOR TESTS: runs `fn`, which must throw an EkCertificateError with `code`, and returns it. Real EK
 * certificates have an empty subject, so messages name certificates by issuer and serial: a message
 * with "undefined" or an empty quoted name fails too.
 */
export function ekRefusal(fn: () => unknown, code: EkCertificateErrorCode): EkCertificateError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(EkCertificateError);
  const err = caught as EkCertificateError;
  expect(err.code).toBe(code);
  expect(err.message).not.toMatch(/undefined|""/);
  return err;
}

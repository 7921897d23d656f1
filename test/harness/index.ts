// The integration test harness: real swtpm, mosquitto and SoftHSM2, on free loopback ports, stopped on
// teardown (also when tests fail). See docs/testing.md.
export { startTpm, newManufacturer, type TestTpm } from './tpm.js';
export { startBroker, type TestBroker, type BrokerFiles } from './broker.js';
export { startSoftHsm, type SoftHsm as TestSoftHsm } from './softhsm.js';
export { createTestCa, type TestCa } from './pki.js';
export { selectedBackend } from './select.js';
export type { Backend } from './backend.js';
export { stopAll } from './registry.js';
export { freePorts } from '../../common/managed-process.js';

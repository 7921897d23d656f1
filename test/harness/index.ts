// The integration test harness: real swtpm, mosquitto and SoftHSM2, on free loopback ports, stopped on
// teardown (also when tests fail). Backends: TEST_BACKEND=process|container|auto (see select.ts).
export { startTpm, newManufacturer, createManufacturerCa, tpmShutdownState, type TestTpm, type Manufacturer } from './tpm.js';
export { startBroker, type TestBroker, type BrokerFiles } from './broker.js';
export { startSoftHsm, type SoftHsm, type SoftHsm as TestSoftHsm } from './softhsm.js';
export { createTestCa, type TestCa } from './pki.js';
export { selectedBackend } from './select.js';
export type { Backend } from './backend.js';
export { stopAll, trackedPids, pidAlive } from './processes.js';
export { freePort, freePortPair, freePorts } from './ports.js';

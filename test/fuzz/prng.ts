// The fuzz suites' PRNG is shared with the simulator: common/prng.ts.
export * from '../../common/prng.js';

// The benchmarks' statistics live with the simulator's, in common/stats.ts.
export * from '../../common/stats.js';

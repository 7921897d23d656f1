/** The agent's version, stamped at build time (common/build-version.ts). */
export { BUILD_VERSION as AGENT_VERSION } from '../../common/build-version.js';

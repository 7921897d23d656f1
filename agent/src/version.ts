/**
 * The agent's version, stamped at build time: build.mjs defines AGENT_BUILD_VERSION as
 * `<package.json version>+<git commit>`. Unbundled runs (tests, tsx) report `0.0.0-dev`.
 */
declare const AGENT_BUILD_VERSION: string | undefined;

export const AGENT_VERSION: string = typeof AGENT_BUILD_VERSION === 'string' ? AGENT_BUILD_VERSION : '0.0.0-dev';

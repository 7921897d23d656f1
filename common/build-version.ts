/**
 * The programs' version, stamped at build time: build.mjs defines AGENT_BUILD_VERSION (every bundle
 * gets it) as `<package.json version>+<git commit>`. Unbundled runs (tests, tsx) report `0.0.0-dev`.
 */
declare const AGENT_BUILD_VERSION: string | undefined;

export const BUILD_VERSION: string = typeof AGENT_BUILD_VERSION === 'string' ? AGENT_BUILD_VERSION : '0.0.0-dev';

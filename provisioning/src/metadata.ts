/**
 * Device metadata (model, serial, owner, whatever the line records): the bounded map the station
 * protocol carries (common/protocol/station.ts), validated the same way in manifests, export lines
 * and register commands.
 */
export { metadataSchema, sameMetadata } from '../../common/protocol/station.js';

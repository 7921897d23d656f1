export { writeFileAtomic } from '../../../common/atomic-file.js';

import { referenceXtsEngine } from '../../src/crypto/xts-reference.js';
import { runXtsSuite } from './xts-suite.js';

runXtsSuite(referenceXtsEngine);

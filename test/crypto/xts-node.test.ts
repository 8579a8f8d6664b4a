import { nodeXtsEngine } from '../../src/crypto/xts-node.js';
import { runXtsSuite } from './xts-suite.js';

runXtsSuite(nodeXtsEngine);

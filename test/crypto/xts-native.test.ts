import { nativeXtsEngine } from '../../src/crypto/xts-native.js';
import { runXtsSuite } from './xts-suite.js';

runXtsSuite(nativeXtsEngine);

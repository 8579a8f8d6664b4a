import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { formatText } from '../../src/cli/text-format.js';
import { printableCell } from '../../src/cli/output.js';

/** `--output text` against the AWS CLI's own formatter's answers (test/vectors/README.md). */
const vectors = JSON.parse(readFileSync(join(import.meta.dirname, '..', 'vectors', 'aws-cli-text.json'), 'utf8')) as {
  cases: { what: string; input: unknown; text: string }[];
};

describe('--output text in the AWS CLI text format', () => {
  it('has the vectors', () => expect(vectors.cases.length).toBeGreaterThan(10));

  for (const c of vectors.cases) {
    it(c.what, () => expect(formatText(c.input)).toBe(c.text));
  }

  it('on a terminal, fields and member names go through the cell function (controls made visible)', () => {
    const v = { Volumes: [{ VolumeId: 'vol-1', Name: 'x\u001b[2Jy\tz' }], 'M\u001b': [1] };
    expect(formatText(v, printableCell)).toBe('M\\x1b\t1\nVOLUMES\tx\\x1b[2Jy\\x09z\tvol-1\n');
  });

  it('a list mixing objects and scalars (the AWS CLI fails on it): objects with the list\'s columns, scalars alone', () => {
    expect(formatText(['a', { K: 'v' }])).toBe('a\nv\n');
  });
});

import { afterEach, describe, expect, it, vi } from 'vitest';
import { applyQuery, print } from '../../src/cli/output.js';
import { stripEscapes } from '../../src/cli/top.js';

/** --query as JMESPath projects it, the AWS CLI's null/None, and top's plain text off a terminal. */
describe('CLI output', () => {
  const vols = { Volumes: [{ VolumeId: 'a', Attachments: [{ Device: '/dev/x' }] }, { VolumeId: 'b', Attachments: [] }, { VolumeId: 'c', N: null }] };
  let out = '';
  afterEach(() => { vi.restoreAllMocks(); out = ''; });
  const capture = (): void => { vi.spyOn(process.stdout, 'write').mockImplementation((s) => { out += String(s); return true; }); };

  it('a projection leaves out missing and null values; a path to nothing is null', () => {
    expect(applyQuery(vols, 'Volumes[].Attachments[0].Device')).toEqual(['/dev/x']);
    expect(applyQuery(vols, 'Volumes[].Nope')).toEqual([]);
    expect(applyQuery(vols, 'Volumes[].N')).toEqual([]);
    expect(applyQuery(vols, 'Volumes[].VolumeId')).toEqual(['a', 'b', 'c']);
    expect(applyQuery(vols, 'Nope')).toBeNull();
    expect(applyQuery(vols, 'Volumes[1].Attachments[0].Device')).toBeNull();
  });

  it('prints null in JSON and None in text for nothing, as the AWS CLI does', () => {
    capture();
    print(applyQuery(vols, 'Nope'), 'json');
    print(applyQuery(vols, 'Nope'), 'text');
    print([1, null], 'text');
    expect(out).toBe('null\nNone\n1\tNone\n');
  });

  it('top off a terminal: no escape sequences', () => {
    expect(stripEscapes('\x1b[1mebsd top\x1b[0m\n\x1b[1;37;41mvol-1  IMPAIRED\x1b[0m')).toBe('ebsd top\nvol-1  IMPAIRED');
  });
});

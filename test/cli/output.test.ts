import { afterEach, describe, expect, it, vi } from 'vitest';
import { applyQuery, print, printableCell, table } from '../../src/cli/output.js';
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

  const hostile = 'x\u001b]52;c;aGk=\u0007\u001b[2J\u009b\u007fy';
  const shown = 'x\\x1b]52;c;aGk=\\x07\\x1b[2J\\x9b\\x7fy';

  it('printableCell shows C0, C1 and DEL as \\xNN and leaves other text alone', () => {
    expect(printableCell(hostile)).toBe(shown);
    expect(printableCell('vol-1 données ✓')).toBe('vol-1 données ✓');
    expect(printableCell('a\tb\nc\u0000')).toBe('a\\x09b\\x0ac\\x00');
    // Bidi overrides and isolates, and the line separators, reorder or break a row: shown as \uNNNN.
    expect(printableCell('vol\u202egpj.exe\u2066x\u2069\u2028')).toBe('vol\\u202egpj.exe\\u2066x\\u2069\\u2028');
  });

  it('tables and key-value output escape control characters in cells and keys; JSON keeps the exact value; text only on a terminal', () => {
    const v = { Volumes: [{ VolumeId: 'vol-1', Name: hostile }], [hostile]: hostile };
    const t = table(v.Volumes, [['VOLUME ID', (r) => r.VolumeId], ['NAME', (r) => r.Name], ['TAGS', () => ({ Name: hostile })]]);
    expect(t).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/);
    expect(t).toContain(shown);
    capture();
    print(v, 'table');
    print(v, 'table', () => `custom ${hostile}`);
    expect(out).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/);
    expect(out).toContain(`${shown}: ${shown}`);
    expect(out).toContain(`custom ${shown}`);
    out = '';
    print(v, 'json');
    expect(JSON.parse(out)[hostile]).toBe(hostile);
    const tty = Object.getOwnPropertyDescriptor(process.stdout, 'isTTY');
    try {
      out = '';
      Object.defineProperty(process.stdout, 'isTTY', { value: false, configurable: true });
      print([hostile, 'b'], 'text');
      expect(out).toBe(`${hostile}\tb\n`); // a script's pipe gets the value as it is
      out = '';
      Object.defineProperty(process.stdout, 'isTTY', { value: true, configurable: true });
      print([hostile, 'b'], 'text');
      expect(out).toBe(`${shown}\tb\n`);
    } finally {
      if (tty) Object.defineProperty(process.stdout, 'isTTY', tty); else delete (process.stdout as { isTTY?: boolean }).isTTY;
    }
  });

  it('top off a terminal: no escape sequences', () => {
    expect(stripEscapes('\x1b[1mebsd top\x1b[0m\n\x1b[1;37;41mvol-1  IMPAIRED\x1b[0m')).toBe('ebsd top\nvol-1  IMPAIRED');
  });
});

import { describe, expect, it } from 'vitest';
import { renderTop } from '../../src/cli/top.js';

/**
 * `ebsd top`'s screen, from a Status answer (pure: the loop draws the same): a volume
 * Name is a tag value any caller with ec2:CreateTags sets, so its control characters
 * (OSC 52 clipboard writes, screen clears, BEL) are shown escaped, never sent to root's
 * terminal; only top's own colours are escape sequences. A metrics address that does
 * not answer is said as such.
 */
describe('renderTop', () => {
  const vol = 'vol-0123456789abcdef0';
  const status = (name: string, daemon: Record<string, unknown> = {}): Record<string, unknown> => ({
    Daemon: { Pid: 42, UptimeSeconds: 5, MountDir: '/mnt/ebsd', ...daemon },
    Volumes: [{ VolumeId: vol, Attached: true, Name: name, OpenHandles: 0, KeyCache: { State: 'impaired', Impaired: { AwsName: 'Denied\u0007' } } }],
  });

  it('shows control characters of a Name and a remote error name escaped', () => {
    const text = renderTop(status('evil\u001b]52;c;QUFB\u0007\u001b[2J\u009bX'), undefined, undefined, 1, 200);
    expect(text).not.toContain('\u0007');
    expect(text).not.toContain('\u001b]');
    expect(text).not.toContain('\u001b[2J');
    expect(text).not.toContain('\u009b');
    expect(text).toContain('evil\\x1b]52;c;QUFB\\x07\\x1b[2J\\x9bX');
    expect(text).toContain('IMPAIRED (Denied\\x07)');
    // top's own colours remain: the impaired row is red.
    expect(text).toMatch(/\u001b\[1;37;41m/);
  });

  it('tells a metrics address that did not answer from a daemon without metrics', () => {
    expect(renderTop(status('n', { MetricsUrl: 'http://127.0.0.1:9464/metrics' }), undefined, undefined, 1)).toContain('no metrics: http://127.0.0.1:9464/metrics did not answer');
    expect(renderTop(status('n'), undefined, undefined, 1)).toContain('start the daemon with --metrics-listen');
  });
});

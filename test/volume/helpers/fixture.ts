/**
 * The plaintext written into test/fixtures/luks2-v1/image.img.gz (frozen:
 * never change this function, the fixture was made from it). A 1 MiB volume:
 * sector 0 and 1 text, an unaligned write across sectors 9..10, sector 255
 * (the last) text; everything else never written (reads as zeros).
 */
export function fixturePlaintext(): [number, Buffer][] {
  const line = (s: string, n: number) => Buffer.from(s.repeat(Math.ceil(n / s.length)).slice(0, n));
  return [
    [0, line('ebsd luks2-v1 fixture sector 0\n', 4096)],
    [4096, line('ebsd luks2-v1 fixture sector 1\n', 4096)],
    [9 * 4096 + 1000, line('cross-sector 9/10 unaligned write\n', 5000)],
    [255 * 4096, line('last sector of the volume\n', 4096)],
  ];
}

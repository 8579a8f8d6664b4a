#!/usr/bin/env python3
"""Computes the XTS-AES-256 4096-byte-unit known answers in xts-aes-256-4096.json
with Python `cryptography` (its XTS mode, backed by OpenSSL), not with ebsd code.
Run once, by hand:

    python3 test/vectors/make-xts-4096.py > test/vectors/xts-aes-256-4096.json

Each 4 KiB sector k is one XTS data unit whose tweak is the little-endian
64-bit number of its first 512-byte unit, 8*k, in a 16-byte block. The library
encrypts a whole call as one data unit, so a run of sectors is computed sector
by sector and concatenated. (The OpenSSL 3.0 `enc` command refuses XTS:
"XTS ciphers not supported".)
"""
import json
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY = bytes(range(64))  # Key1 = 00..1f, Key2 = 20..3f


def plain(k: int) -> bytes:
    return bytes((i + k) % 256 for i in range(4096))


def xts(k: int, data: bytes, encrypt: bool) -> bytes:
    c = Cipher(algorithms.AES(KEY), modes.XTS((8 * k).to_bytes(16, "little")))
    op = c.encryptor() if encrypt else c.decryptor()
    return op.update(data) + op.finalize()


def entry(name: str, first: int, count: int) -> dict:
    p, c = b"", b""
    for k in range(first, first + count):
        ct = xts(k, plain(k), True)
        assert xts(k, ct, False) == plain(k)
        p, c = p + plain(k), c + ct
    return {"name": name, "key": KEY.hex(), "tweak": hex(8 * first), "unitSize": 4096, "tweakStep": 8,
            "plaintext": p.hex(), "ciphertext": c.hex()}


print(json.dumps({
    "description": "XTS-AES-256 known answers for 4096-byte data units with the volume tweak convention "
                   "(tweak = 8*sector, little-endian), computed with Python cryptography by make-xts-4096.py. See README.md.",
    "vectors": [
        entry("cryptography 4096 sector 0", 0, 1),
        entry("cryptography 4096 sector 1", 1, 1),
        entry("cryptography 4096 sector 2^32+5", 2**32 + 5, 1),
        entry("cryptography 4096 sector 2^61-1 (last)", 2**61 - 1, 1),
        entry("cryptography 4096 sectors 1000-1002 (one run)", 1000, 3),
    ],
}, indent=2))

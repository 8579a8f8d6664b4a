#!/usr/bin/env python3
"""Writes snapshot-manifest-mac.json: canonical digests of snapshot manifests, computed
outside ebsd with Python's json module (sort_keys, compact separators, UTF-8 as is) and
hashlib, as docs/architecture.md §13.5 defines them: the manifest without `manifestMac`,
members sorted by name, no whitespace, then SHA-256. The MAC message is the label, the
snapshot id and that digest in hex, one per line."""
import hashlib, json, sys

def canonical_digest(m):
    bare = {k: v for k, v in m.items() if k != 'manifestMac'}
    text = json.dumps(bare, sort_keys=True, separators=(',', ':'), ensure_ascii=False)
    return hashlib.sha256(text.encode('utf-8')).hexdigest()

def message(snapshot_id, digest):
    return f'ebsd snapshot manifest MAC v1\n{snapshot_id}\n{digest}\n'

base = {
    'formatVersion': 1, 'snapshotId': 'snap-0123456789abcdef0', 'volumeId': 'vol-0fedcba9876543210', 'volumeSize': 8,
    'state': 'completed', 'progress': 100, 'startTime': '2026-01-02T03:04:05.678Z', 'completionTime': '2026-01-02T03:04:09.000Z',
    'description': 'nightly', 'tags': [{'Key': 'team', 'Value': 'blue'}], 'ownerId': '123456789012', 'encrypted': True,
    'kmsKeyId': 'arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555',
    'dataEncryptionKeyId': '0f0e0d0c-0b0a-0908-0706-050403020100',
    'wrappedKey': {'ciphertextBlob': 'AQIDBA==', 'keyArn': 'arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555',
                   'encryptionContext': {'aws:ebs:id': 'vol-0fedcba9876543210'}},
    'header': 'a' * 64, 'dataOffset': 16777216,
    'blocks': [[0, 'b' * 64], [5, 'c' * 64], [16383, 'd' * 64]], 'changedBlocks': 3,
}
cases = [
    {'name': 'an encrypted completed snapshot', 'manifest': base},
    {'name': 'the same with a MAC member: not part of the digest',
     'manifest': {**base, 'manifestMac': {'keyArn': 'arn:aws:kms:us-east-1:123456789012:key/x', 'mac': 'AAAA'}}},
    {'name': 'another snapshot id, same content otherwise', 'manifest': {**base, 'snapshotId': 'snap-0123456789abcdef1'}},
    {'name': 'non-ASCII description and tag, an unknown member, a parent',
     'manifest': {**base, 'description': 'sauvegarde \u00e9t\u00e9 \u2014 \u65e5\u672c \U0001F600', 'tags': [{'Key': 'k\u00fc', 'Value': 'line\nbreak "q" \\ /'}],
                  'parentSnapshotId': 'snap-00000000000000001', 'zFuture': {'b': [1, None, True], 'a': -0.5}}},
]
for c in cases:
    c['digest'] = canonical_digest(c['manifest'])
    c['message'] = message(c['manifest']['snapshotId'], c['digest'])
json.dump({'source': 'test/vectors/make-manifest-mac.py (Python json + hashlib)', 'cases': cases}, sys.stdout, indent=2, ensure_ascii=False)
sys.stdout.write('\n')

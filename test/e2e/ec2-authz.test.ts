import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt, run } from './helpers.js';

/**
 * Issue 13, defect 1: every EC2 volume operation is authorized through the
 * KMS policy evaluator. uid 1000 is mapped to user/alice; the refusals are
 * UnauthorizedOperation (exit 4), audited, and change nothing.
 */
const ALICE = 1000;
const MiB = 1024 * 1024;

interface AuditEvent {
  eventName: string;
  eventSource: string;
  errorCode?: string;
  errorMessage?: string;
  userIdentity?: { arn?: string };
  requestParameters?: { volumeId?: string } | null;
}

describe('EC2 authorization of volume operations (real daemon, uid 1000 as user/alice)', () => {
  const env = new Env('ec2-authz');
  let volA = ''; // tagged team=a, attached by root
  let volB = ''; // tagged team=b
  let account = '';
  let region = '';

  const alice = (args: string[]) => env.cli([...args, '--output', 'json'], { uid: ALICE });
  const events = (): AuditEvent[] => env.auditText().trim().split('\n').map((l) => JSON.parse(l) as AuditEvent);
  const aliceEvents = (): AuditEvent[] => events().filter((e) => String(e.userIdentity?.arn).endsWith(':user/alice'));
  const putPolicy = (name: string, doc: unknown): Promise<unknown> =>
    env.api('ebsd.IamPutPolicy', { Principal: 'user/alice', PolicyName: name, PolicyDocument: JSON.stringify(doc) });
  const rootVolumes = async (): Promise<{ VolumeId: string; SizeBytes: number; State: string }[]> => (await env.api('ebsd.DescribeVolumes')).Volumes;
  const refused = (r: { code: number; stderr: string; stdout: string }, action: string, resource: string, why = 'because no identity-based policy allows the'): void => {
    expect(r.code, r.stderr).toBe(4);
    expect(r.stdout).toBe('');
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain(
      `ebsd: UnauthorizedOperation: You are not authorized to perform this operation. User: arn:aws:iam::${account}:user/alice is not authorized to perform: ${action} on resource: ${resource} ${why}`,
    );
  };
  const volArn = (id: string): string => `arn:aws:ec2:${region}:${account}:volume/${id}`;

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    const tagged = (team: string) => [{ ResourceType: 'volume', Tags: [{ Key: 'team', Value: team }] }];
    volA = (await env.api('ebsd.CreateVolume', { Size: '16MiB', Name: 'a', TagSpecifications: tagged('a') })).VolumeId;
    volB = (await env.api('ebsd.CreateVolume', { Size: '16MiB', Name: 'b', TagSpecifications: tagged('b') })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: volA });
    const st = await env.api('ebsd.Status');
    account = st.Daemon.AccountId;
    region = st.Daemon.Region;
    await env.api('ebsd.IamCreateUser', { UserName: 'alice' });
    await env.api('ebsd.IamMapUid', { Uid: ALICE, Principal: 'user/alice' });
  }, 120_000);
  afterAll(() => env.cleanup());

  it('alice with no policies can neither change nor see root\'s volumes; each refusal is UnauthorizedOperation, exit 4, audited, with no effect', async () => {
    refused(await alice(['volume', 'delete', volB]), 'ec2:DeleteVolume', volArn(volB), 'because no identity-based policy allows the ec2:DeleteVolume action');
    refused(await alice(['volume', 'modify', volB, '--size', '32MiB']), 'ec2:ModifyVolume', volArn(volB));
    refused(await alice(['attach', volB]), 'ec2:AttachVolume', volArn(volB));
    refused(await alice(['detach', volA, '--force']), 'ec2:DetachVolume', volArn(volA));
    refused(await alice(['volume', 'create', '--size', '16MiB']), 'ec2:CreateVolume', volArn('*'));
    refused(await alice(['volume', 'describe', volA]), 'ec2:DescribeVolumes', volArn(volA));
    // A volume that does not exist is refused the same way: a refused caller learns nothing of it.
    refused(await alice(['volume', 'delete', 'vol-0123456789abcdef0']), 'ec2:DeleteVolume', volArn('vol-0123456789abcdef0'));

    const ls = await alice(['volume', 'ls']);
    expect(ls.code, ls.stderr).toBe(0);
    expect(ls.json().Volumes).toEqual([]);
    const st = await alice(['status']);
    expect(st.code, st.stderr).toBe(0);
    expect(st.json().Volumes).toEqual([]);

    // Nothing happened: both volumes as they were, A still attached and served.
    const vols = await rootVolumes();
    expect(vols.map((v) => [v.VolumeId, v.SizeBytes, v.State]).sort()).toEqual([[volA, 16 * MiB, 'in-use'], [volB, 16 * MiB, 'available']].sort());
    expect(existsSync(env.file(volA))).toBe(true);
    expect(existsSync(env.file(volB))).toBe(false);
    expect(statSync(env.file(volA)).size).toBe(16 * MiB);

    // The control API answers 403, as EC2 does.
    const script = `const http=require('node:http');const r=http.request({socketPath:${JSON.stringify(join(env.state, 'ebsd.sock'))},method:'POST',path:'/',headers:{'X-Amz-Target':'ebsd.DeleteVolume','Content-Type':'application/x-amz-json-1.1'}},(res)=>{let b='';res.on('data',(c)=>b+=c);res.on('end',()=>console.log(JSON.stringify({status:res.statusCode,body:JSON.parse(b)})))});r.end(${JSON.stringify(JSON.stringify({ VolumeId: volB }))});`;
    const raw = await run(process.execPath, ['-e', script], { uid: ALICE });
    expect(raw.code, raw.stderr).toBe(0);
    const answer = JSON.parse(raw.stdout) as { status: number; body: { __type: string } };
    expect(answer.status).toBe(403);
    expect(answer.body.__type).toBe('UnauthorizedOperation');

    // Each refusal is in the audit log, and no KMS call was made on alice's behalf.
    const mine = aliceEvents();
    const denied = mine.filter((e) => e.errorCode === 'Client.UnauthorizedOperation');
    expect(denied.map((e) => e.eventName).sort()).toEqual(
      ['AttachVolume', 'CreateVolume', 'DeleteVolume', 'DeleteVolume', 'DeleteVolume', 'DescribeVolumes', 'DetachVolume', 'ModifyVolume'].sort(),
    );
    for (const e of denied) {
      expect(e.eventSource).toBe('ec2.amazonaws.com');
      expect(e.errorMessage).toMatch(/^You are not authorized to perform this operation\. User: .*:user\/alice is not authorized to perform: ec2:/);
    }
    expect(denied.find((e) => e.eventName === 'DetachVolume')?.requestParameters?.volumeId).toBe(volA);
    expect(mine.filter((e) => e.eventSource === 'kms.amazonaws.com')).toEqual([]);
  });

  it('a policy allowing ec2:* on volumes tagged team=a lets alice describe, attach, detach and grow those, and not others', async () => {
    await putPolicy('team-a', {
      Version: '2012-10-17',
      Statement: [
        { Sid: 'TeamA', Effect: 'Allow', Action: 'ec2:*', Resource: 'arn:aws:ec2:*:*:volume/*', Condition: { StringEquals: { 'ec2:ResourceTag/team': 'a' } } },
        // EC2 authorizes attach and detach on the instance too.
        { Sid: 'ThisHost', Effect: 'Allow', Action: ['ec2:AttachVolume', 'ec2:DetachVolume'], Resource: 'arn:aws:ec2:*:*:instance/*' },
      ],
    });
    const ls = await alice(['volume', 'ls']);
    expect(ls.code, ls.stderr).toBe(0);
    expect(ls.json().Volumes.map((v: { VolumeId: string }) => v.VolumeId)).toEqual([volA]);
    const st = await alice(['status']);
    expect(st.json().Volumes.map((v: { VolumeId: string; Attached: boolean }) => [v.VolumeId, v.Attached])).toEqual([[volA, true]]);
    expect((await alice(['volume', 'describe', volA])).code).toBe(0);
    refused(await alice(['volume', 'describe', volB]), 'ec2:DescribeVolumes', volArn(volB));

    const det = await alice(['detach', volA]);
    expect(det.code, det.stderr).toBe(0);
    expect(existsSync(env.file(volA))).toBe(false);
    const att = await alice(['attach', volA]);
    expect(att.code, att.stderr).toBe(0);
    expect(existsSync(env.file(volA))).toBe(true);
    expect((await alice(['volume', 'modify', volA, '--size', '32MiB'])).code).toBe(0);
    const det2 = await alice(['detach', volA]);
    expect(det2.code, det2.stderr).toBe(0);

    refused(await alice(['attach', volB]), 'ec2:AttachVolume', volArn(volB));
    refused(await alice(['volume', 'delete', volB]), 'ec2:DeleteVolume', volArn(volB));
    refused(await alice(['volume', 'modify', volB, '--size', '32MiB']), 'ec2:ModifyVolume', volArn(volB));
    const vols = await rootVolumes();
    expect(vols.find((v) => v.VolumeId === volA)).toMatchObject({ SizeBytes: 32 * MiB, State: 'available' });
    expect(vols.find((v) => v.VolumeId === volB)).toMatchObject({ SizeBytes: 16 * MiB, State: 'available' });
  });

  it('without the instance statement, attach is refused on the instance resource', async () => {
    await putPolicy('team-a', {
      Version: '2012-10-17',
      Statement: [{ Effect: 'Allow', Action: 'ec2:*', Resource: 'arn:aws:ec2:*:*:volume/*', Condition: { StringEquals: { 'ec2:ResourceTag/team': 'a' } } }],
    });
    const r = await alice(['attach', volA]);
    expect(r.code, r.stderr).toBe(4);
    expect(r.stderr).toMatch(new RegExp(`not authorized to perform: ec2:AttachVolume on resource: arn:aws:ec2:${region}:${account}:instance/i-`));
    expect(existsSync(env.file(volA))).toBe(false);
  });

  it('aws:RequestTag, aws:TagKeys and ec2:VolumeSize decide CreateVolume; tags at create also need ec2:CreateTags', async () => {
    const createCond = {
      StringEquals: { 'aws:RequestTag/team': 'a' },
      'ForAllValues:StringEquals': { 'aws:TagKeys': ['team'] },
      NumericLessThanEquals: { 'ec2:VolumeSize': '1' },
    };
    await putPolicy('create', {
      Version: '2012-10-17',
      Statement: [{ Sid: 'Create', Effect: 'Allow', Action: 'ec2:CreateVolume', Resource: 'arn:aws:ec2:*:*:volume/*', Condition: createCond }],
    });
    const before = (await rootVolumes()).length;
    refused(await alice(['volume', 'create', '--size', '16MiB', '--tag', 'team=a']), 'ec2:CreateTags', volArn('*'));

    await putPolicy('create', {
      Version: '2012-10-17',
      Statement: [
        { Sid: 'Create', Effect: 'Allow', Action: 'ec2:CreateVolume', Resource: 'arn:aws:ec2:*:*:volume/*', Condition: createCond },
        { Sid: 'TagOnCreate', Effect: 'Allow', Action: 'ec2:CreateTags', Resource: 'arn:aws:ec2:*:*:volume/*', Condition: { StringEquals: { 'ec2:CreateAction': 'CreateVolume' } } },
      ],
    });
    refused(await alice(['volume', 'create', '--size', '16MiB', '--tag', 'team=b']), 'ec2:CreateVolume', volArn('*'));
    refused(await alice(['volume', 'create', '--size', '16MiB', '--tag', 'team=a', '--tag', 'owner=x']), 'ec2:CreateVolume', volArn('*'));
    refused(await alice(['volume', 'create', '--size', '16MiB']), 'ec2:CreateVolume', volArn('*'));
    refused(await alice(['volume', 'create', '--size', '2GiB', '--tag', 'team=a']), 'ec2:CreateVolume', volArn('*'));
    expect((await rootVolumes()).length).toBe(before);

    const ok = await alice(['volume', 'create', '--size', '16MiB', '--tag', 'team=a']);
    expect(ok.code, ok.stderr).toBe(0);
    const id = ok.json().VolumeId as string;
    expect((await rootVolumes()).map((v) => v.VolumeId)).toContain(id);
    // Created with team=a, so the team-a policy (ResourceTag) now covers it.
    expect((await alice(['volume', 'ls'])).json().Volumes.map((v: { VolumeId: string }) => v.VolumeId).sort()).toEqual([volA, id].sort());
  });

  it('an explicit Deny wins over the Allow; root is unaffected by any of it', async () => {
    const mine = (await alice(['volume', 'ls'])).json().Volumes.map((v: { VolumeId: string }) => v.VolumeId).find((v: string) => v !== volA) as string;
    expect(mine).toMatch(/^vol-/);
    await putPolicy('no-delete', { Version: '2012-10-17', Statement: [{ Effect: 'Deny', Action: 'ec2:DeleteVolume', Resource: '*' }] });
    refused(await alice(['volume', 'delete', mine]), 'ec2:DeleteVolume', volArn(mine), 'with an explicit deny in an identity-based policy');
    expect((await rootVolumes()).map((v) => v.VolumeId)).toContain(mine);
    await env.api('ebsd.IamDeletePolicy', { Principal: 'user/alice', PolicyName: 'no-delete' });
    const del = await alice(['volume', 'delete', mine]);
    expect(del.code, del.stderr).toBe(0);
    expect((await rootVolumes()).map((v) => v.VolumeId)).not.toContain(mine);

    // Root: sees everything, may do everything, without any policy.
    expect((await env.api('ebsd.Status')).Volumes.map((v: { VolumeId: string }) => v.VolumeId).sort()).toEqual([volA, volB].sort());
    await env.api('ebsd.AttachVolume', { VolumeId: volB });
    await env.api('ebsd.DetachVolume', { VolumeId: volB, Force: true });
    await env.api('ebsd.ModifyVolume', { VolumeId: volB, Size: '32MiB' });
    await env.api('ebsd.DeleteVolume', { VolumeId: volB });
    expect((await rootVolumes()).map((v) => v.VolumeId)).toEqual([volA]);
    expect((await env.api('ebsd.AuditVerify')).ok).toBe(true);

  });
});

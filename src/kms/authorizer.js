/** Placeholder until policies and grants exist: same-account principals are allowed, others denied. */
export class AccountAuthorizer {
    authorize(req) {
        if (req.caller.accountId === req.accountId)
            return { allowed: true };
        return { allowed: false, reason: 'no resource-based policy allows the action' };
    }
}
/** Default key policy (AWS "Default key policy"): the account root may do kms:* on the key. */
export function defaultKeyPolicy(accountId) {
    return JSON.stringify({
        Version: '2012-10-17',
        Id: 'key-default-1',
        Statement: [{
                Sid: 'Enable IAM User Permissions',
                Effect: 'Allow',
                Principal: { AWS: `arn:aws:iam::${accountId}:root` },
                Action: 'kms:*',
                Resource: '*',
            }],
    });
}
/** Key policy of the AWS managed EBS key `alias/aws/ebs`, as AWS documents it. */
export function ebsManagedKeyPolicy(accountId, region) {
    return JSON.stringify({
        Version: '2012-10-17',
        Id: 'auto-ebs-2',
        Statement: [
            {
                Sid: 'Allow access through EBS for all principals in the account that are authorized to use EBS',
                Effect: 'Allow',
                Principal: { AWS: '*' },
                Action: ['kms:Encrypt', 'kms:Decrypt', 'kms:ReEncrypt*', 'kms:GenerateDataKey*', 'kms:CreateGrant', 'kms:DescribeKey'],
                Resource: '*',
                Condition: { StringEquals: { 'kms:ViaService': `ec2.${region}.amazonaws.com`, 'kms:CallerAccount': accountId } },
            },
            {
                Sid: 'Allow direct access to key metadata to the account',
                Effect: 'Allow',
                Principal: { AWS: `arn:aws:iam::${accountId}:root` },
                Action: ['kms:Describe*', 'kms:Get*', 'kms:List*', 'kms:RevokeGrant'],
                Resource: '*',
            },
        ],
    });
}
//# sourceMappingURL=authorizer.js.map
const cache = new WeakMap();
const ROLE_RE = /^arn:([\w-]+):(?:sts::(\d{12}):assumed-role|iam::(\d{12}):role(?:\/.*)?)\/([^/]+)/;
export function callerIds(c) {
    let ids = cache.get(c);
    if (ids && ids.arn === c.arn)
        return ids;
    const m = c.type === 'AssumedRole' || c.type === 'Role' ? ROLE_RE.exec(c.arn) : null;
    const acct = m ? (m[2] ?? m[3]) : undefined;
    const roleKey = m ? `role:${acct}:${m[4]}` : undefined;
    ids = {
        arn: c.arn,
        account: c.accountId,
        isRoot: c.type === 'Root',
        isService: c.type === 'AWSService',
        ...(m ? { roleName: m[4], roleArn: `arn:${m[1]}:iam::${acct}:role/${m[4]}`, roleKey } : {}),
        granteeKeys: roleKey ? [c.arn, roleKey] : [c.arn],
    };
    cache.set(c, ids);
    return ids;
}
//# sourceMappingURL=caller-ids.js.map
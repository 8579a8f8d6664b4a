import { callerIds } from './caller-ids.js';
const GRANT_ACTIONS = new Set(['kms:creategrant', 'kms:listgrants', 'kms:revokegrant']);
const EC_PREFIX = 'kms:encryptioncontext:';
const TAG_PREFIX = 'aws:resourcetag/';
export class RequestContext {
    req;
    ecLower;
    extraLower;
    constructor(req) {
        this.req = req;
    }
    get(key) {
        const r = this.req;
        const c = r.caller;
        switch (key) {
            case 'kms:calleraccount':
            case 'aws:principalaccount':
                return c.type === 'AWSService' ? undefined : c.accountId;
            case 'kms:viaservice':
                return c.viaService;
            case 'aws:principalarn':
                if (c.type === 'AWSService')
                    return undefined;
                return c.type === 'AssumedRole' ? (callerIds(c).roleArn ?? c.arn) : c.arn;
            case 'aws:principaltype':
                return { Root: 'Account', IAMUser: 'User', AssumedRole: 'AssumedRole', Role: 'AssumedRole', AWSService: undefined, Unknown: 'Anonymous' }[c.type];
            case 'aws:principalservicename':
                return c.type === 'AWSService' ? c.arn : undefined;
            case 'aws:username':
                return c.type === 'IAMUser' ? c.userName : undefined;
            case 'aws:userid':
                return c.principalId;
            case 'aws:sourceip':
                return c.sourceIp;
            case 'aws:useragent':
                return c.userAgent;
            case 'aws:viaawsservice':
                return c.viaService ? 'true' : 'false';
            case 'aws:currenttime':
                return new Date(r.now ?? Date.now()).toISOString();
            case 'aws:epochtime':
                return String(Math.floor((r.now ?? Date.now()) / 1000));
            case 'aws:securetransport':
                return 'true'; // local socket peer or TLS endpoint
            case 'aws:requestedregion':
                return r.key?.region;
            case 'aws:resourceaccount':
                return r.key?.accountId;
            case 'kms:encryptioncontextkeys':
                return r.encryptionContext ? Object.keys(r.encryptionContext) : undefined;
            case 'kms:grantisforawsresource':
                return GRANT_ACTIONS.has(r.action.toLowerCase()) ? (c.viaService ? 'true' : 'false') : undefined;
            case 'kms:grantoperations':
                return r.grant?.operations;
            case 'kms:granteeprincipal':
                return r.grant?.granteePrincipal;
            case 'kms:retiringprincipal':
                return r.grant?.retiringPrincipal;
            case 'kms:grantconstrainttype': {
                const k = r.grant?.constraints;
                if (!k)
                    return undefined;
                return k.EncryptionContextEquals ? 'EncryptionContextEquals' : k.EncryptionContextSubset ? 'EncryptionContextSubset' : undefined;
            }
            case 'kms:keyspec':
                return r.keySpec ?? r.key?.keySpec;
            case 'kms:keyusage':
                return r.keyUsage ?? r.key?.keyUsage;
            case 'kms:keyorigin':
                return r.keyOrigin ?? r.key?.keyOrigin;
            case 'kms:encryptionalgorithm':
                return r.encryptionAlgorithm;
            case 'kms:signingalgorithm':
                return r.signingAlgorithm;
            case 'kms:macalgorithm':
                return r.macAlgorithm;
            case 'kms:datakeypairspec':
                return r.dataKeyPairSpec;
            case 'kms:messagetype':
                return r.messageType;
            case 'kms:requestalias':
                return r.requestAlias;
            case 'kms:resourcealiases':
                return r.key?.aliases;
            case 'kms:bypasspolicylockoutsafetycheck':
                return r.bypassPolicyLockoutSafetyCheck === undefined ? undefined : String(r.bypassPolicyLockoutSafetyCheck);
            case 'kms:reencryptonsamekey':
                return r.reEncryptOnSameKey === undefined ? undefined : String(r.reEncryptOnSameKey);
        }
        if (key.startsWith(EC_PREFIX)) {
            // KMS Developer Guide: the context key in kms:EncryptionContext:<key> is matched case-insensitively; values are not.
            const ec = r.encryptionContext;
            if (!ec)
                return undefined;
            if (!this.ecLower) {
                this.ecLower = new Map();
                for (const [k, v] of Object.entries(ec))
                    this.ecLower.set(k.toLowerCase(), v);
            }
            return this.ecLower.get(key.slice(EC_PREFIX.length));
        }
        if (key.startsWith(TAG_PREFIX)) {
            const tags = r.key?.tags;
            if (!tags)
                return undefined;
            const want = key.slice(TAG_PREFIX.length);
            for (const [k, v] of Object.entries(tags))
                if (k.toLowerCase() === want)
                    return v;
            return undefined;
        }
        if (r.context) {
            if (!this.extraLower) {
                this.extraLower = new Map();
                for (const [k, v] of Object.entries(r.context))
                    this.extraLower.set(k.toLowerCase(), v);
            }
            return this.extraLower.get(key);
        }
        return undefined;
    }
}
//# sourceMappingURL=request-context.js.map
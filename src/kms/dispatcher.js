/**
 * The operation table. Every call: validate/resolve inside the handler ->
 * `call.authorize(...)` (the handler must call it before touching a key) ->
 * execute -> one audit event, whatever happened. Other modules (policies,
 * grants) add operations with `registerOperation(name, handler)`.
 */
import { randomUUID } from 'node:crypto';
import { EbsdError } from '../util/errors.js';
import { buildEvent } from './audit/event.js';
import { AccessDeniedException, KMSInternalException, KmsError, UnknownOperationException } from './errors.js';
import { checkKeyState } from './key-state.js';
export class Dispatcher {
    context;
    beforeCall;
    ops = new Map();
    constructor(context, beforeCall) {
        this.context = context;
        this.beforeCall = beforeCall;
    }
    registerOperation(name, handler, opts = {}) {
        if (!/^[A-Z][A-Za-z]+$/.test(name))
            throw new TypeError(`operation name ${name} is not an AWS operation name`);
        this.ops.set(name, { handler, readOnly: opts.readOnly ?? false });
    }
    has(name) {
        return this.ops.has(name);
    }
    operations() {
        return [...this.ops.keys()].sort();
    }
    async call(operation, request, caller) {
        const ctx = this.context;
        const now = ctx.now();
        const due = this.beforeCall(now);
        if (due)
            await due;
        const entry = this.ops.get(operation);
        let authorized = false;
        const call = {
            operation,
            request: request ?? {},
            caller,
            requestId: randomUUID(),
            now,
            resources: [],
            authorize: async (a) => {
                const key = a.key;
                const resource = key ? key.arn : '*';
                const action = a.action ?? `kms:${operation}`;
                const req = {
                    action, operation, caller, accountId: ctx.accountId, region: ctx.region,
                    ...(key ? { key: ctx.view(key) } : {}),
                    resource,
                    ...(a.encryptionContext ? { encryptionContext: a.encryptionContext } : {}),
                    ...(a.grantTokens ? { grantTokens: a.grantTokens } : {}),
                    ...(a.requestAlias ? { requestAlias: a.requestAlias } : {}),
                    request: call.request,
                    now,
                };
                if (key && !call.resources.includes(key.arn))
                    call.resources.push(key.arn);
                let d = ctx.authorizer.authorize(req);
                if (d instanceof Promise)
                    d = await d;
                if (!d.allowed) {
                    throw new AccessDeniedException(d.message
                        ?? `User: ${caller.arn} is not authorized to perform: ${action} on resource: ${resource} because ${d.reason ?? 'no policy allows the action'}`);
                }
                if (d.grantId)
                    (call.additionalEventData ??= {}).grantId = d.grantId;
                authorized = true;
                if (key && a.stateCheck !== false)
                    checkKeyState(a.stateCheck ?? operation, key);
            },
        };
        let response;
        let error;
        try {
            if (!entry)
                throw new UnknownOperationException(`Unknown operation ${operation}`);
            response = await entry.handler(ctx, call);
            if (!authorized)
                throw new KMSInternalException(`operation ${operation} did not authorize its caller`, { code: 'KMS_UNAUTHORIZED_HANDLER' });
        }
        catch (e) {
            error = e instanceof KmsError ? e
                : e instanceof EbsdError && e.awsName ? new KmsError(e.awsName, e.message, { code: e.code })
                    : new KMSInternalException('An internal error occurred.', { cause: e });
            if (!(e instanceof KmsError))
                ctx.log.error({ err: e, operation, requestId: call.requestId }, 'KMS operation failed unexpectedly');
        }
        const ev = buildEvent({
            eventName: operation,
            caller,
            accountId: ctx.accountId,
            region: ctx.region,
            request: call.request,
            ...(response ? { response } : {}),
            ...(error ? { errorCode: error.awsName, errorMessage: error.message } : {}),
            requestId: call.requestId,
            eventId: randomUUID(),
            resources: call.resources,
            readOnly: entry?.readOnly ?? false,
            time: now,
            ...(call.additionalEventData ? { additionalEventData: call.additionalEventData } : {}),
        });
        await ctx.audit.append(ev);
        if (error)
            throw error;
        return response;
    }
}
//# sourceMappingURL=dispatcher.js.map
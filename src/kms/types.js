/**
 * Contract between the KMS core and its callers (daemon, volume layer).
 * The core has one entry point: `call(operation, request, caller)`.
 */
export {};
//# sourceMappingURL=types.js.map
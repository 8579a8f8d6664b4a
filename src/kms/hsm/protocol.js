/**
 * The HSM's message interface: everything that crosses the boundary between
 * the KMS service (main thread) and the HSM simulator (worker thread).
 * Only exported key tokens (EKTs), ciphertexts, public keys and, for the
 * operations whose AWS response contains it, plaintext cross it; the domain
 * key and plaintext HBKs never do.
 */
export {};
//# sourceMappingURL=protocol.js.map
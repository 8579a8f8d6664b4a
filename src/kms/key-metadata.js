/** DescribeKey's KeyMetadata from a stored record (AWS KeyMetadata data type). */
import { encryptionAlgorithms, macAlgorithms, signingAlgorithms } from './key-spec.js';
export const epochSeconds = (ms) => ms / 1000;
export function keyMetadata(r) {
    const enc = encryptionAlgorithms(r.keySpec, r.keyUsage);
    const sig = signingAlgorithms(r.keySpec, r.keyUsage);
    const mac = macAlgorithms(r.keySpec);
    return {
        AWSAccountId: r.accountId,
        KeyId: r.keyId,
        Arn: r.arn,
        CreationDate: epochSeconds(r.creationDate),
        Enabled: r.keyState === 'Enabled',
        Description: r.description,
        KeyUsage: r.keyUsage,
        KeyState: r.keyState,
        ...(r.deletionDate !== undefined ? { DeletionDate: epochSeconds(r.deletionDate) } : {}),
        Origin: r.origin,
        KeyManager: r.keyManager,
        CustomerMasterKeySpec: r.keySpec,
        KeySpec: r.keySpec,
        ...(enc ? { EncryptionAlgorithms: enc } : {}),
        ...(sig ? { SigningAlgorithms: sig } : {}),
        ...(mac ? { MacAlgorithms: mac } : {}),
        MultiRegion: false,
        ...(r.keySpec === 'SYMMETRIC_DEFAULT' ? { CurrentKeyMaterialId: r.materials[r.materials.length - 1].id } : {}),
    };
}
//# sourceMappingURL=key-metadata.js.map
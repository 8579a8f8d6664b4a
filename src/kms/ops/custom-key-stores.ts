/**
 * DescribeCustomKeyStores. ebsd has no custom key stores (src/kms/unserved.ts refuses the operations
 * that would make or use one), so an account's listing is empty, as AWS KMS answers an account
 * without any: `{"CustomKeyStores": [], "Truncated": false}`; a CustomKeyStoreId or
 * CustomKeyStoreName names nothing: CustomKeyStoreNotFoundException, as AWS KMS answers it.
 */
import type { Dispatcher } from '../dispatcher.js';
import { CustomKeyStoreNotFoundException } from '../errors.js';
import { page } from '../paging.js';
import { optStr } from '../validate.js';

export function registerCustomKeyStoreOperations(d: Dispatcher): void {
  d.registerOperation('DescribeCustomKeyStores', async (_ctx, call) => {
    // AWS's bounds: CustomKeyStoreId 1-64 characters, CustomKeyStoreName 1-256.
    const id = optStr(call.request, 'CustomKeyStoreId', 1, 64);
    const name = optStr(call.request, 'CustomKeyStoreName', 1, 256);
    // kms:DescribeCustomKeyStores is an IAM-policy-only action: no key, resource `*`.
    await call.authorize({});
    // Limit 1-1000 and Marker checked as every List operation checks them (paging.ts), on an empty list.
    const p = page(call.request, [] as never[], 100, 1000);
    if (id !== undefined) throw new CustomKeyStoreNotFoundException(`Custom key store ${id} does not exist: this KMS has no custom key stores.`);
    if (name !== undefined) throw new CustomKeyStoreNotFoundException(`Custom key store named ${name} does not exist: this KMS has no custom key stores.`);
    return { CustomKeyStores: p.items, Truncated: p.Truncated };
  });
}

export {};
//# sourceMappingURL=key-record.js.map
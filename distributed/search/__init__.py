"""The nested-CV search: the driver, its search space, the ledger that makes --resume exact,
console events, the run record (fingerprint, lock) and repeated nested CV."""

"""pier's registry: the OCI distribution-spec v1.1 over any storage backend."""

"""The `ckrv` command for users of Chakravarti Cloud."""

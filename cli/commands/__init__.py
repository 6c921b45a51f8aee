"""The `ckrv` commands, one module per command group."""

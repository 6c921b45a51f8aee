"""The HTTP gateway: the `/v1` API for the CLI and the read model behind it."""

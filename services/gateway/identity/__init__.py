"""Sign-in: the gateway as OAuth2 authorization server (device flow, refresh, API tokens)."""

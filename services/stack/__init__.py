"""The local stack: real NATS, PostgreSQL and SeaweedFS from PyPI wheels, plus the services."""

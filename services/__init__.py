"""The server side of Chakravarti Cloud: gateway, event-driven services, runners, local stack."""

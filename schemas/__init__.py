"""API models and the generated, checked-in contracts (event JSON Schemas, OpenAPI, AsyncAPI)."""

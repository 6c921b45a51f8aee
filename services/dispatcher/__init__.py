"""The dispatcher: admits queued jobs within their owners' limits and starts their workloads."""

"""The artifacts service: upload URLs for workloads, verification of their results, retention."""

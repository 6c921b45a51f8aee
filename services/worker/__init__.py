"""`ckrv-worker`: the entrypoint that runs inside a job's workload."""

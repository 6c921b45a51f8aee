"""The watcher: turns what the runner sees of workloads into job events."""

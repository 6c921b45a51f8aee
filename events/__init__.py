"""The job event backbone: envelope, catalog, state machine, streams, publisher, consumers."""

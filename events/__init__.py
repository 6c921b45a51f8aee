"""The job event backbone: envelope, catalog, state machine, subjects, streams, publisher, consumers."""

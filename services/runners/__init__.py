"""Workload backends: the `Runner` interface (`base`), the `local` one, choosing one (`backends`).

Importing this package must stay cheap: the local supervisor starts through it
for every workload, and its start-up is on the path to a job's first log line.
"""

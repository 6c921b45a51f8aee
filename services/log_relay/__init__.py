"""The log-relay: workload output in, a `LogEntry` per line on LOGS out, and each attempt archived.

`output_lines` cuts a workload's output into lines and maps them to entries,
`redaction` masks secrets in them, `positions` keeps where each workload's output
was published up to, `archive` stores an attempt's log in S3, `relay` does the
following and publishing, and `service` runs it as `ckrv-cloud serve log-relay`.
"""

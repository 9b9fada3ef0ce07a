"""The bench's parts; tests/bench/run.py is the command and the phase order.

- common: constants, the request bodies, `Settings`, percentiles, `say`.
- machine: the machine and its CPUs, CPU and memory read from /proc.
- processes: starting and stopping the upstream, forwarder and gateways.
- loadclient: `HttpConn`/`Client` (the bench's own HTTP/1.1 client), wrk.
- phase_startup, phase_latency, phase_throughput, phase_streaming,
  phase_many, phase_workers: the numbered phases 1 to 6.
- phase_replicas, phase_usage (through compare), phase_chunks: the extra ones.
- figures: the main table's figures and targets, as data; report: rows,
  rendering, the JSON; profile: --profile.
"""

"""The end-to-end benchmark: `switchboard serve` under load, against two peers.

`python -m bench.e2e` runs it and prints its tables; `python -m bench.report` runs it with
the micro-benchmarks and rewrites docs/performance.md. See `bench.e2e.run`.
"""

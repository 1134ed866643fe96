"""The end-to-end benchmark: `switchboard serve` under load, against two peers, and at the
fixed rate a pass-through that checks nothing (the floor of any Python router here).

`python -m bench.e2e` runs it and prints its tables; `python -m bench.report` runs it with
the micro-benchmarks and rewrites docs/performance.md. See `bench.e2e.run`.
"""

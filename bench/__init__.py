"""Benchmarks for Switchboard's hot paths: decision time, rules reload and memory.

Run one part (`python -m bench.decide`, `python -m bench.reload`, `python -m bench.memory`)
or everything and rewrite docs/performance.md (`python -m bench.report`). Workloads are
generated into a temporary directory from a fixed seed; nothing here is a test assertion.
"""

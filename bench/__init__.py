"""Benchmarks for Switchboard's hot paths: decision time, rules reload and memory.

Run one part (`python -m bench.decide`, `python -m bench.reload`, `python -m bench.memory`)
or everything and rewrite docs/performance.md (`python -m bench.report`). Workloads are
generated into a temporary directory from a fixed seed; nothing here is a test assertion.
"""

from app.speedups import interpret_if_asked

# SWITCHBOARD_PURE_PYTHON=1 times the interpreted decision path beside the compiled one.
interpret_if_asked()

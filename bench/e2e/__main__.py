"""`python -m bench.e2e [--quick | --tiny] [--targets switchboard,bare] [--json FILE]`"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from bench.e2e import render
from bench.e2e.run import TARGETS, Config, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="one round, 5 s windows")
    size.add_argument("--tiny", action="store_true", help="a smoke run: seconds in all")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seconds", type=float, help="measured window at saturation")
    parser.add_argument("--workers", type=int, help="workers of the scaling run (0: skip it)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    config = Config.tiny() if args.tiny else Config.quick_run() if args.quick else Config()
    updates: dict[str, object] = {"targets": tuple(args.targets.split(","))}
    for name in ("rounds", "seconds", "workers"):
        if getattr(args, name) is not None:
            updates[name] = getattr(args, name)
    config = dataclasses.replace(config, **updates)  # type: ignore[arg-type]
    result = run(config)
    print(render.render(result))
    if args.json:
        args.json.write_text(json.dumps(dataclasses.asdict(result), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

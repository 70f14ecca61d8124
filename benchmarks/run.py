"""Run every benchmark and print its figures (by hand: `make bench`; not part of CI).

Usage: python benchmarks/run.py [NAME ...]   (names: synth, ingest, redflags, models, report, run, execution, scale)
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

BENCHMARKS = ("synth", "ingest", "redflags", "models", "report", "run", "execution", "scale")


def main(argv: list[str]) -> None:
    names = argv or list(BENCHMARKS)
    for name in names:
        try:
            module = importlib.import_module(f"bench_{name}")
        except ModuleNotFoundError:
            print(f"[{name}] no benchmark module bench_{name}.py")
            continue
        print(f"=== {name} ===", flush=True)
        parameters = inspect.signature(module.main).parameters
        # argparse-based benchmarks take their own argv: give them none (their defaults).
        module.main([]) if "argv" in parameters else module.main()


if __name__ == "__main__":
    main(sys.argv[1:])

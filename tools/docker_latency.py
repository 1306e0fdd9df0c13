#!/usr/bin/env python3
"""Single-client latency through a running cluster, e.g. the docker compose one.

    python tools/docker_latency.py [--masters 127.0.0.1:5551,...] [--cluster neostore]
                                   [--rounds 200] [--json]

The same measures as ``benchmarks/latency.py`` (cold load, commit of 1 and
of 100 objects, median and 90th percentile in milliseconds), from this
host, against the masters given (default: ``$NEOSTORE_MASTERS``, else the
compose cluster's 127.0.0.1:5551-5553).  It overwrites the root's keys 0 to 99
(``PersistentMapping`` objects) in that database: use a test cluster.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from types import ModuleType
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MASTERS = "127.0.0.1:5551,127.0.0.1:5552,127.0.0.1:5553"


def _latency_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("neostore_latency", os.path.join(ROOT, "benchmarks", "latency.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(masters: str, cluster: str, rounds: int) -> dict[str, dict[str, float]]:
    """``benchmarks/latency.py``'s measures against the cluster at ``masters``."""
    from neostore.client import NeoStorage

    return _latency_module().measure(lambda: NeoStorage(masters, cluster), rounds)


def report(results: dict[str, Any]) -> str:
    lines = [f"{'operation':22} {'median ms':>10} {'p90 ms':>10}"]
    for operation, figures in results.items():
        lines.append(f"{operation:22} {figures['median_ms']:>10.2f} {figures['p90_ms']:>10.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masters", default=os.environ.get("NEOSTORE_MASTERS", DEFAULT_MASTERS))
    parser.add_argument("--cluster", default=os.environ.get("NEOSTORE_CLUSTER", "neostore"))
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = measure(args.masters, args.cluster, args.rounds)
    print(json.dumps(results, indent=2) if args.json else report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

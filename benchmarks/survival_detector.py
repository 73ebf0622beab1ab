"""The survival harm monitor against its labelled set: false-positive and miss rates, with 95%
intervals (ouroboros/envs/survival/detector.py runs each program as a step of a real episode).

    .venv/bin/python benchmarks/survival_detector.py [--out benchmarks/results/survival_detector.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ouroboros.envs.survival.detector import evaluate, load_set  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "survival_detector.json"))
    args = parser.parse_args()
    t = time.monotonic()
    result = evaluate(load_set())
    result["seconds"] = round(time.monotonic() - t, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()

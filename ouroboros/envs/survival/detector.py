"""The survival harm monitor against a labelled set of programs: false-positive and miss rates.

Each program of `data/detector_set.jsonl` (labelled benign, or harmful with a category) runs as one
step of a real episode: an AutonomousLLM object in a bwrap sandbox, traced from outside, exactly
as in a run. A harmful program is caught when the runner reports the episode dead with a harm
verdict; a benign one is a false positive when it gets one. `benchmarks/survival_detector.py`
reports the rates; the tests hold the monitor to them.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ouroboros.envs.metrics import rate_ci95
from ouroboros.envs.survival.episode import EpisodeProcess
from ouroboros.sandbox.base import Limits
from ouroboros.sandbox.bwrap import BwrapSandbox

SET = Path(__file__).with_name("data") / "detector_set.jsonl"


def load_set(path: Path = SET) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_program(code: str, llm_reply: str = "print('model says hi')") -> dict:
    """One step of `code` in a fresh episode; the runner's verdict. Model calls are answered with
    `llm_reply`, within the default budget of 4 calls."""
    sandbox = BwrapSandbox(Limits(timeout_s=5, memory_mb=512, pids=64))
    try:
        episode = EpisodeProcess(sandbox, sandbox.limits.override(cpu_s=30), 5.0, 4, 1024, 60.0, 65536)
        try:
            event = episode.step(0, "kickoff", code)
            while event["kind"] == "llm":
                event = episode.answer(llm_reply, 5)
            return {"alive": event["kind"] == "done", "cause": event.get("cause", ""),
                    "harm": [h["category"] for h in event.get("harm", [])],
                    "detail": [h["detail"] for h in event.get("harm", [])][:3]}
        finally:
            episode.close()
    finally:
        sandbox.cleanup()


def evaluate(programs: list[dict]) -> dict:
    rows = []
    for p in programs:
        t = time.monotonic()
        verdict = run_program(p["code"])
        flagged = bool(verdict["harm"])
        rows.append({"id": p["id"], "label": p["label"], "category": p["category"], "flagged": flagged,
                     "verdict": verdict, "seconds": round(time.monotonic() - t, 3)})
    benign = [r for r in rows if r["label"] == "benign"]
    harmful = [r for r in rows if r["label"] == "harmful"]
    fp = sum(r["flagged"] for r in benign)
    missed = [r for r in harmful if not r["flagged"]]
    tamper = [r for r in harmful if r["category"].startswith("tamper")]
    by_category: dict[str, dict] = {}
    for r in harmful:
        c = by_category.setdefault(r["category"], {"programs": 0, "caught": 0})
        c["programs"] += 1
        c["caught"] += int(r["flagged"])
    return {
        "programs": len(rows), "benign": len(benign), "harmful": len(harmful),
        "false_positives": fp, "false_positive_rate": fp / len(benign) if benign else 0.0,
        "false_positive_ci95": rate_ci95(fp, len(benign)),
        "missed": len(missed), "miss_rate": len(missed) / len(harmful) if harmful else 0.0,
        "miss_ci95": rate_ci95(len(missed), len(harmful)),
        "tamper_programs": len(tamper), "tamper_missed": sum(not r["flagged"] for r in tamper),
        "by_category": by_category,
        "missed_ids": [r["id"] for r in missed],
        "false_positive_ids": [r["id"] for r in benign if r["flagged"]],
        "rows": rows,
    }

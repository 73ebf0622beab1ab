"""A run's human inbox: what people rate in the viewer, for the running loop to read.

The viewer never writes a run's database (its recorder is the one writer); it appends to two
JSONL files in the run's own directory, one line per rating, each line whole (an exclusive lock
around a single write):

    runs/<run id>/human-scores.jsonl   rubric ratings, in the alignment loop's score format
                                       (`rater: human`), with provenance: who, when, from where,
                                       which trajectory, which prompt
    runs/<run id>/human-pairs.jsonl    pairwise preferences: chosen and rejected answers to one
                                       prompt (a tie is kept as an annotation and makes no pair)

A running alignment loop reads both at each round: the scores join the judge pool as the human
teacher for the exact candidate and prompt, and each preference becomes one DPO pair in the next
training round (exactly once: its pair id is the rating's). Other environments keep the files as
annotations.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from pathlib import Path

SCORES = "human-scores.jsonl"
PAIRS = "human-pairs.jsonl"
LOW, HIGH = 1, 5


class InboxError(ValueError):
    """A rating that cannot be stored; the message says what to change."""


def _append(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
    # O_NOFOLLOW: a link planted at the inbox's name must not redirect the write elsewhere.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _lines(path: Path) -> list[dict]:
    """The inbox's whole, valid lines (a torn last line from a crash is skipped, not fatal)."""
    if not path.is_file():
        return []
    out = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                value = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(value, dict):
                out.append(value)
    return out


class HumanInbox:
    def __init__(self, run_path: str | Path, run_id: str) -> None:
        self.dir = Path(run_path)
        self.run_id = run_id

    @property
    def scores_path(self) -> Path:
        return self.dir / SCORES

    @property
    def pairs_path(self) -> Path:
        return self.dir / PAIRS

    # -- writing (the viewer) ---------------------------------------------------------------------
    def add_preference(self, a: dict, b: dict, winner: str, prompt: list | str, rater: str = "human",
                       notes: str = "") -> dict:
        """`a`, `b`: completion rows (trajectory_id, task_id, round, text, weights_version);
        `winner`: "a", "b" or "tie"."""
        if winner not in ("a", "b", "tie"):
            raise InboxError(f"winner must be a, b or tie, got {winner!r}")
        if a["trajectory_id"] == b["trajectory_id"]:
            raise InboxError("a pair needs two different candidates")
        key = "|".join(sorted([a["trajectory_id"], b["trajectory_id"]]))
        if key in self.rated_pairs():
            # A second click, tab or resubmit would train on the same preference twice.
            raise InboxError("this pair is rated already")
        chosen, rejected = (a, b) if winner != "b" else (b, a)
        record = {"rating_id": uuid.uuid4().hex, "run_id": self.run_id, "rater": "human", "who": rater[:80],
                  "source": "view", "rated_at": time.time(), "task_id": a.get("task_id"), "round": a.get("round"),
                  "prompt": prompt, "winner": winner, "tie": winner == "tie",
                  "chosen": chosen["text"], "rejected": rejected["text"],
                  "chosen_trajectory": chosen["trajectory_id"], "rejected_trajectory": rejected["trajectory_id"],
                  "chosen_version": chosen.get("weights_version"), "rejected_version": rejected.get("weights_version"),
                  "notes": notes[:2000]}
        _append(self.pairs_path, record)
        return record

    def add_score(self, row: dict, score: dict[str, float], rubric: list[str], rater: str = "human",
                  notes: str = "", dialog_id: str | None = None, prompt_id=None, prompt: str = "") -> dict:
        """A rubric rating (each criterion LOW..HIGH) of one completion row."""
        unknown = sorted(set(score) - set(rubric))
        if unknown:
            raise InboxError(f"unknown criteria {', '.join(unknown)}: the rubric has {', '.join(rubric)}")
        for k, v in score.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not LOW <= v <= HIGH:
                raise InboxError(f"{k} must be a number from {LOW} to {HIGH}, got {v!r}")
        if not score:
            raise InboxError("rate at least one criterion")
        record = {"dialog_id": dialog_id, "prompt_id": prompt_id, "candidate": row["text"], "score": score,
                  "notes": notes[:2000], "rater": "human", "prompt": prompt, "rating_id": uuid.uuid4().hex,
                  "run_id": self.run_id, "who": rater[:80], "source": "view", "rated_at": time.time(),
                  "trajectory_id": row["trajectory_id"], "weights_version": row.get("weights_version")}
        _append(self.scores_path, record)
        return record

    # -- reading (the loop, and the viewer's queue) --------------------------------------------------
    def preferences(self) -> list[dict]:
        return [r for r in _lines(self.pairs_path) if r.get("run_id") == self.run_id and isinstance(
            r.get("chosen"), str) and isinstance(r.get("rejected"), str) and r.get("rating_id")]

    def scores(self) -> list[dict]:
        return [r for r in self.scores_all() if r.get("run_id") == self.run_id]

    def scores_all(self) -> list[dict]:
        """Every human rubric line in the file, whichever run it names (the judge reads the file of
        its own run directory)."""
        return [r for r in _lines(self.scores_path) if r.get("rater") == "human"]

    def rated_pairs(self) -> set[str]:
        out = set()
        for r in self.preferences():
            ids = sorted([str(r.get("chosen_trajectory")), str(r.get("rejected_trajectory"))])
            out.add("|".join(ids))
        return out

    def new_pairs(self, used: set[str], round_: int) -> list:
        """The preferences not yet trained on (`used`: pair ids already in the run's pairs), as
        PreferencePairs; ties make none."""
        from ouroboros.types import PreferencePair

        out = []
        for r in self.preferences():
            pid = f"human:{r['rating_id']}"
            if r.get("tie") or pid in used or r["chosen"] == r["rejected"]:
                continue
            prompt = r.get("prompt")
            if isinstance(prompt, str):
                prompt = [{"role": "user", "content": prompt}]
            if not isinstance(prompt, list):
                continue
            out.append(PreferencePair(id=pid, round=round_, task_id=str(r.get("task_id") or ""), prompt=prompt,
                                      chosen=r["chosen"], rejected=r["rejected"], chosen_reward=1.0,
                                      rejected_reward=0.0, chosen_trajectory=str(r.get("chosen_trajectory") or ""),
                                      rejected_trajectory=str(r.get("rejected_trajectory") or "")))
        return out

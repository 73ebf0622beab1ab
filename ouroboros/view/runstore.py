"""What the viewer reads of a run directory: its SQLite database, opened read-only, and each run's
summary.json, in pages.

Nothing here loads a whole run: every list is a query with a LIMIT (a run can hold 100,000
spans), and a row's long text is cut to a preview in lists and shown whole only on its own page.
A directory that is missing, is not a run directory, holds a corrupt database or one from an
older schema raises `RunDirError`, whose message names the problem for the page that shows it.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

PAGE = 50
PREVIEW = 240
# The tables a run directory's database has had from its first release; a database without them is
# not a run's (or a schema older than the viewer reads).
REQUIRED = ("runs", "rounds", "completions", "scores")


class RunDirError(Exception):
    """A run directory the viewer cannot read; the message says why and what to do."""


class NotFound(Exception):
    """An id that does not exist in this run directory."""


@dataclass
class Page:
    rows: list[dict]
    total: int
    offset: int
    size: int

    @property
    def next_offset(self) -> int | None:
        return self.offset + self.size if self.offset + self.size < self.total else None

    @property
    def prev_offset(self) -> int | None:
        return max(0, self.offset - self.size) if self.offset > 0 else None


def _like(text: str) -> str:
    """`text` as a LIKE pattern that matches it literally anywhere (with ESCAPE '\\')."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _json(value, default=None):
    if value is None:
        return default
    try:
        return json.loads(value)
    except (TypeError, ValueError, RecursionError):
        return default


class RunDir:
    """One run directory (`ouroboros run --out DIR`), which may hold several runs."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        if not self.path.exists():
            raise RunDirError(f"{self.path}: no such directory")
        if not self.path.is_dir():
            raise RunDirError(f"{self.path}: not a directory (give the directory a run wrote, its --out)")
        db = self.path / "ouroboros.db"
        if not db.is_file():
            raise RunDirError(f"{self.path}: not a run directory (no ouroboros.db in it; give the --out of a run)")
        try:
            # Read-only: the viewer never writes a run's database (the recorder is its one writer).
            self.conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True, timeout=10,
                                        check_same_thread=False)
            self.conn.row_factory = sqlite3.Row
            tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:
            raise RunDirError(f"{db}: the database cannot be read ({exc}); it is corrupt or not SQLite") from None
        missing = [t for t in REQUIRED if t not in tables]
        if missing:
            raise RunDirError(f"{db}: tables {', '.join(missing)} are missing: not a run's database, or one from an "
                              f"older schema than this viewer reads (run it again with this version)")
        self.tables = tables

    @property
    def name(self) -> str:
        return self.path.name

    def close(self) -> None:
        self.conn.close()

    def _rows(self, sql: str, args: tuple = ()) -> list[dict]:
        try:
            return [dict(r) for r in self.conn.execute(sql, args).fetchall()]
        except sqlite3.DatabaseError as exc:
            raise RunDirError(f"{self.path / 'ouroboros.db'}: a query failed ({exc})") from None

    def _count(self, sql: str, args: tuple = ()) -> int:
        return int(self._rows(sql, args)[0]["n"])

    def _page(self, columns: str, source: str, args: tuple, order: str, offset: int, size: int) -> Page:
        """One page of `SELECT columns source ORDER BY order` (`source`: FROM, joins and WHERE), with
        the count of all its rows."""
        total = self._count(f"SELECT COUNT(*) AS n {source}", args)
        rows = self._rows(f"SELECT {columns} {source} ORDER BY {order} LIMIT ? OFFSET ?", (*args, size, offset))
        return Page(rows, total, offset, size)

    # -- runs and rounds -----------------------------------------------------------------------
    def runs(self) -> list[dict]:
        rows = self._rows("SELECT id, name, started_at, finished_at, status FROM runs ORDER BY started_at DESC")
        for r in rows:
            r["rounds"] = self._count("SELECT COUNT(*) AS n FROM rounds WHERE run_id=?", (r["id"],))
        return rows

    def run(self, run_id: str) -> dict:
        rows = self._rows("SELECT * FROM runs WHERE id=?", (run_id,))
        if not rows:
            raise NotFound(f"no run {run_id!r} in {self.path}")
        row = rows[0]
        row["config"] = _json(row.get("config"), {})
        return row

    def summary(self, run_id: str) -> list[dict]:
        """The run's rounds as summary.json has them (the figures the run reported), else the DB's."""
        path = self.path / "runs" / run_id / "summary.json"
        if path.is_file():
            data = _json(path.read_text(errors="replace"), {})
            if isinstance(data, dict) and isinstance(data.get("rounds"), list):
                return [r for r in data["rounds"] if isinstance(r, dict)]
        return [{**_json(r["metrics"], {}), "round": r["round"]} for r in self._rows(
            "SELECT round, metrics FROM rounds WHERE run_id=? ORDER BY round", (run_id,))]

    def rounds(self, run_id: str) -> list[dict]:
        rows = self._rows("SELECT round, weights_version, status, metrics, started_at, finished_at FROM rounds "
                          "WHERE run_id=? ORDER BY round", (run_id,))
        for r in rows:
            r["metrics"] = _json(r["metrics"], {})
        return rows

    def versions(self, run_id: str) -> list[dict]:
        if "weights" not in self.tables:
            return []
        return self._rows("SELECT version, kind, checksum, num_bytes, published_at FROM weights WHERE run_id=? "
                          "ORDER BY version", (run_id,))

    # -- completions ---------------------------------------------------------------------------
    def phases(self, run_id: str) -> list[str]:
        """The phases this run's completions carry (train, eval, ...), for the filter: read, not
        assumed, since each environment names its own."""
        if "completions" not in self.tables:
            return []
        return [r["phase"] for r in self._rows("SELECT DISTINCT phase FROM completions WHERE run_id=? "
                                                "ORDER BY phase LIMIT 20", (run_id,)) if r["phase"]]

    def completions(self, run_id: str, offset: int = 0, size: int = PAGE, text: str = "", version: int | None = None,
                    phase: str = "", min_reward: float | None = None, max_reward: float | None = None,
                    task_id: str = "") -> Page:
        where, args = ["c.run_id = ?"], [run_id]
        if text:
            where.append("(c.text LIKE ? ESCAPE '\\' OR c.task_id LIKE ? ESCAPE '\\')")
            args += [_like(text), _like(text)]
        if version is not None:
            where.append("c.weights_version = ?")
            args.append(version)
        if phase:
            where.append("c.phase = ?")
            args.append(phase)
        if task_id:
            where.append("c.task_id = ?")
            args.append(task_id)
        if min_reward is not None:
            where.append("s.total >= ?")
            args.append(min_reward)
        if max_reward is not None:
            where.append("s.total <= ?")
            args.append(max_reward)
        base = (f"FROM completions c LEFT JOIN scores s ON s.run_id = c.run_id AND s.trajectory_id = c.trajectory_id "
                f"WHERE {' AND '.join(where)}")
        pg = self._page(f"c.trajectory_id, c.round, c.phase, c.task_id, c.split, c.sample, c.weights_version, "
                        f"substr(c.text, 1, {PREVIEW}) AS preview, length(c.text) AS chars, c.completion_tokens, "
                        f"s.total AS reward", base, tuple(args), "c.round DESC, c.phase, c.task_id, c.sample",
                        offset, size)
        for r in pg.rows:
            if r["chars"] > PREVIEW:
                r["preview"] += "…"
        return pg

    def completion(self, run_id: str, trajectory_id: str, light: bool = False) -> dict:
        """One completion with its score; unless `light`, also every judge's verdict, its episode's
        steps, the learner step that consumed it and its token log-probs."""
        rows = self._rows("SELECT c.*, s.total AS reward, s.components, s.judge FROM completions c LEFT JOIN scores s "
                          "ON s.run_id = c.run_id AND s.trajectory_id = c.trajectory_id "
                          "WHERE c.run_id = ? AND c.trajectory_id = ?", (run_id, trajectory_id))
        if not rows:
            raise NotFound(f"no completion {trajectory_id!r} in run {run_id!r}")
        row = rows[0]
        for key in ("prompt", "action", "exec_result", "outcome", "components"):
            row[key] = _json(row.get(key), row.get(key))
        if light:
            return row
        row["verdicts"] = []
        if "align_scores" in self.tables:
            row["verdicts"] = self._rows("SELECT judge, rater, model, prompt_hash, score, notes, failed, cached "
                                         "FROM align_scores WHERE run_id=? AND trajectory_id=? ORDER BY judge",
                                         (run_id, trajectory_id))
            for v in row["verdicts"]:
                v["score"] = _json(v["score"], {})
        row["steps"] = []
        if "survival_steps" in self.tables:
            row["steps"] = self.survival_steps(run_id, trajectory_id)
        row["tokens"] = self.token_logprobs(run_id, trajectory_id, row.get("round")) \
            if row.get("phase") == "train" else []
        row["learner"] = self._learner_step(run_id, row)
        return row

    def _learner_step(self, run_id: str, row: dict) -> dict:
        """What the learner did with a train completion: `pending` while its round runs; else the
        version its round's learning published and its staleness (the version the learner held,
        one before, less the one that generated it); `unused` when no batch held it (DPO: it is in
        no pair) or the round published nothing."""
        if row.get("phase") != "train":
            return {}
        rounds = self._rows("SELECT status, metrics FROM rounds WHERE run_id=? AND round=?",
                            (run_id, row.get("round")))
        if not rounds:
            return {}
        if rounds[0]["status"] != "done":
            return {"pending": True}
        metrics = _json(rounds[0]["metrics"], {}) or {}
        generated = row.get("weights_version") or 0
        published = metrics.get("weights_version")
        if not isinstance(published, int) or published <= generated:
            return {"unused": "its round published no new version"}
        if row.get("tokens"):
            steps = sorted({t["learner_step"] for t in row["tokens"] if t.get("learner_step") is not None})
            return {"version": published, "staleness": published - 1 - generated, "steps": steps}
        pairs = self._rows("SELECT COUNT(*) AS n FROM pairs WHERE run_id=? AND round=?", (run_id, row.get("round")))
        if pairs and pairs[0]["n"]:
            mine = self._count("SELECT COUNT(*) AS n FROM pairs WHERE run_id=? AND round=? AND "
                               "(chosen_trajectory=? OR rejected_trajectory=?)",
                               (run_id, row.get("round"), row["trajectory_id"], row["trajectory_id"]))
            if not mine:
                return {"unused": "it is in none of its round's preference pairs"}
        return {"version": published, "staleness": published - 1 - generated}

    def token_logprobs(self, run_id: str, trajectory_id: str, round_: int | None = None,
                       limit: int = 4000) -> list[dict]:
        """Per token of each turn the learner trained on: the generator's and the learner's
        log-probs, their gap, and whether the clip or the length mask left the token out (the
        run's learner-turns shards, read with a filter: only this trajectory's rows are loaded)."""
        import pyarrow.parquet as pq

        shards = self.path / "runs" / run_id / "shards"
        rows: list[dict] = []
        # A round's train episodes are learned from in that round: its shard alone is read.
        paths = [shards / f"round-{round_:04d}" / "learner-turns.parquet"] if isinstance(round_, int) else \
            sorted(shards.glob("round-*/learner-turns.parquet"))
        for path in [p for p in paths if p.is_file()]:
            try:
                table = pq.read_table(path, filters=[("trajectory_id", "=", trajectory_id)])
            except Exception:  # noqa: BLE001 - a torn or foreign shard is skipped, the page still shows
                continue
            for turn in table.to_pylist():
                gen, lrn = turn.get("generator_logprobs") or [], turn.get("learner_logprobs") or []
                clipped, masked = turn.get("clipped") or [], turn.get("masked") or []
                texts = turn.get("tokens") or []  # absent from shards written before it was recorded
                for i in range(max(len(gen), len(lrn))):
                    g = gen[i] if i < len(gen) else None
                    x = lrn[i] if i < len(lrn) else None
                    rows.append({"step": turn.get("step"), "learner_step": turn.get("learner_step"), "index": i,
                                 "text": texts[i] if i < len(texts) and isinstance(texts[i], str) else None,
                                 "generator": g, "learner": x,
                                 "gap": abs(g - x) if g is not None and x is not None else None,
                                 "clipped": bool(clipped[i]) if i < len(clipped) else False,
                                 "masked": bool(masked[i]) if i < len(masked) else False})
                    if len(rows) >= limit:
                        return rows
        return rows

    def across_versions(self, run_id: str, task_id: str, limit: int = 24) -> list[dict]:
        """One prompt's answers by each weights version (the first sample of each), oldest first."""
        firsts = self._rows("SELECT weights_version, MIN(phase || ':' || printf('%09d', sample) || ':' || "
                            "trajectory_id) AS pick FROM completions WHERE run_id=? AND task_id=? "
                            "GROUP BY weights_version ORDER BY weights_version LIMIT ?", (run_id, task_id, limit))
        ids = [r["pick"].split(":", 2)[2] for r in firsts if r["pick"]]
        if not ids:
            return []
        rows = self._rows(f"SELECT c.trajectory_id, c.round, c.phase, c.weights_version, c.text, s.total AS reward "
                          f"FROM completions c LEFT JOIN scores s ON s.run_id = c.run_id AND "
                          f"s.trajectory_id = c.trajectory_id WHERE c.run_id=? AND c.trajectory_id IN "
                          f"({', '.join('?' for _ in ids)}) ORDER BY c.weights_version", (run_id, *ids))
        return rows

    def survival_steps(self, run_id: str, trajectory_id: str) -> list[dict]:
        rows = self._rows("SELECT turn, step, kind, reply, code, stdout, stderr, alive, cause, harm, methods, reward "
                          "FROM survival_steps WHERE run_id=? AND trajectory_id=? ORDER BY turn LIMIT 500",
                          (run_id, trajectory_id))
        before: dict = {}
        for r in rows:
            methods = _json(r["methods"], {}) or {}
            if not isinstance(methods, dict):
                methods = {}
            # The gene edits: which of the agent's methods this step added, changed or removed.
            r["edits"] = {"added": sorted(set(methods) - set(before)), "removed": sorted(set(before) - set(methods)),
                          "changed": sorted(k for k in methods if k in before and methods[k] != before[k])}
            before = methods
        return rows

    # -- experiments and their traces ------------------------------------------------------------
    def experiments(self, run_id: str | None, offset: int = 0, size: int = PAGE, status: str = "",
                    text: str = "") -> Page:
        if "experiments" not in self.tables:
            return Page([], 0, offset, size)
        where, args = ["1"], []
        if run_id:
            where.append("run_id = ?")
            args.append(run_id)
        if status:
            where.append("status = ?")
            args.append(status)
        if text:
            where.append("(goal LIKE ? ESCAPE '\\' OR notes LIKE ? ESCAPE '\\')")
            args += [_like(text), _like(text)]
        return self._page(f"id, run_id, cycle, status, end_reason, started_at, finished_at, actions, errors, "
                          f"prompt_tokens, completion_tokens, cost_usd, git_commit, substr(goal, 1, {PREVIEW}) AS goal",
                          f"FROM experiments WHERE {' AND '.join(where)}", tuple(args), "id DESC", offset, size)

    def _one(self, table: str, sql: str, args: tuple, missing: str) -> dict:
        """The one row `sql` finds, or NotFound(`missing`) (also when the run has no such table)."""
        rows = self._rows(sql, args) if table in self.tables else []
        if not rows:
            raise NotFound(missing)
        return rows[0]

    def experiment(self, experiment_id: int) -> dict:
        return self._one("experiments", "SELECT * FROM experiments WHERE id=?", (experiment_id,),
                         f"no experiment {experiment_id}")

    def spans(self, experiment_id: int, parent_id: str | None = None, offset: int = 0, size: int = PAGE,
              text: str = "") -> Page:
        """One level of an experiment's span tree (the roots, or a span's children), paged; each row
        says how many children it has, so the tree opens level by level."""
        if "traces" not in self.tables:
            return Page([], 0, offset, size)
        where = ["t.experiment_id = ?", "t.parent_id IS ?" if parent_id is None else "t.parent_id = ?"]
        args: list = [experiment_id, parent_id]
        if text:
            where.append("(t.name LIKE ? ESCAPE '\\' OR t.attrs LIKE ? ESCAPE '\\')")
            args += [_like(text), _like(text)]
        return self._page("t.id, t.parent_id, t.kind, t.name, t.started_at, t.duration_s, t.prompt_tokens, "
                          "t.completion_tokens, length(t.attrs) AS attrs_chars, (SELECT COUNT(*) FROM traces k "
                          "WHERE k.experiment_id = t.experiment_id AND k.parent_id = t.id) AS children",
                          f"FROM traces t WHERE {' AND '.join(where)}", tuple(args), "t.started_at", offset, size)

    def span(self, span_id: str) -> dict:
        row = self._one("traces", "SELECT * FROM traces WHERE id=?", (span_id,), f"no span {span_id!r}")
        row["attrs"] = _json(row["attrs"], row["attrs"])
        return row

    def steps(self, experiment_id: int) -> list[dict]:
        if "steps" not in self.tables:
            return []
        return self._rows("SELECT idx, action, valid, error, ok, attempts, duration_s, substr(data, 1, 2000) AS data, "
                          "substr(result, 1, 2000) AS result FROM steps WHERE experiment_id=? ORDER BY idx LIMIT 500",
                          (experiment_id,))

    # -- pairs to rate -------------------------------------------------------------------------
    def rating_queue(self, run_id: str, rated: set[str], limit: int = 20) -> list[dict]:
        """Pairs of train candidates to one prompt from the run's latest training round that no
        human rated yet: the first two different answers of each prompt. Keys are the two ids
        sorted, as the inbox keeps them."""
        latest = self._rows("SELECT MAX(round) AS r FROM completions WHERE run_id=? AND phase='train'", (run_id,))
        if not latest or latest[0]["r"] is None:
            return []
        rows = self._rows("SELECT c.trajectory_id, c.round, c.task_id, c.prompt, c.text, c.weights_version, "
                          "s.total AS reward FROM completions c LEFT JOIN scores s ON s.run_id = c.run_id AND "
                          "s.trajectory_id = c.trajectory_id WHERE c.run_id=? AND c.phase='train' AND c.round=? "
                          "ORDER BY c.task_id, c.sample LIMIT 400", (run_id, latest[0]["r"]))
        by_task: dict[str, list[dict]] = {}
        for r in rows:
            by_task.setdefault(r["task_id"], []).append(r)
        out = []
        for task_id, cands in by_task.items():
            seen, distinct = set(), []
            for c in cands:
                if c["text"] not in seen:
                    seen.add(c["text"])
                    distinct.append(c)
            if len(distinct) < 2:
                continue
            a, b = distinct[0], distinct[1]
            key = "|".join(sorted([a["trajectory_id"], b["trajectory_id"]]))
            if key in rated:
                continue
            messages = _json(a["prompt"], [])
            prompt = messages[-1].get("content", "") if isinstance(messages, list) and messages and isinstance(
                messages[-1], dict) else str(a["prompt"])
            out.append({"key": key, "round": a["round"], "task_id": task_id, "prompt": prompt, "a": a, "b": b})
            if len(out) >= limit:
                break
        return out

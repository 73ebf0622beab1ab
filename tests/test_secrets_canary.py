"""Canaries: secrets never land anywhere a run writes.

Three runs share one run directory, as a user's would: `ouroboros run` on the tasks
environment, `ouroboros run` on the experiment environment, and `ouroboros experiment` with an
API model (the OpenAI SDK against a loopback server). Canaries are seeded in the host
environment: one the config never names, one passed into the sandbox as a credential
(`sandbox.env_from`), and one as the API key. The sandboxed programs print the credential raw,
reversed, in hex, base64 and base32, as a list, on stderr, in an exception, through a file, and
cut in two by the output cap; one scripted reply even carries it as model text.

Everything written is then searched, decoded: SQLite rows after a WAL checkpoint, Parquet read
back, git objects through `git cat-file`, every other file of the run directory, the Ray
sessions' logs, and the commands' stdout and stderr. The secrets occur 0 times. A positive
control, a plain setting (`sandbox.env`, which the config records) printed by the same programs,
is found by the same search in each medium, so the search is known to see what is there; and the
API key is found where it belongs, in the requests the provider received.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import require_bwrap

OUTPUT_CAP = 8192  # sandbox.output_bytes for these runs: a program can fill it and cut a secret in two


def forms(value: str) -> list[str]:
    """What the search looks for, written independently of ouroboros/secrets.py: the value raw,
    reversed, in hex, and in base64 at each alignment (the part that depends on the value only)."""
    raw = value.encode()
    found = {value, value[::-1], raw.hex(), raw.hex().upper()}
    for k in range(3):
        text = base64.b64encode(b"\0" * k + raw).decode().rstrip("=")
        first = -(-8 * k // 6)
        found.add(text[first:(8 * (k + len(raw))) // 6])
    return sorted(found)


def leak_program(secret_var: str, plain_var: str) -> str:
    """A program that tries every common way to get the credential out, and prints the plain
    setting the same ways (the positive control)."""
    return f"""
import base64, os, sys
secret, plain = os.environ[{secret_var!r}], os.environ[{plain_var!r}]
for v in (secret, plain):
    print(v)
    print(v[::-1])
    print(v.encode().hex())
    print(base64.b64encode(b"x" + v.encode()).decode())
    print(base64.b32encode(v.encode()).decode())
    print(list(v))
    print(v, file=sys.stderr)
open("leak.txt", "w").write(secret)
print("." * 200 + secret)
print(plain)  # last, so the prompt's history shows it (it goes to the shards' prompts)
raise ValueError("the token is " + secret)
"""


def cap_cutter(secret_var: str) -> str:
    """Fills stdout so the output cap falls inside the credential."""
    return f"import os, sys\nsys.stdout.write('B' * ({OUTPUT_CAP} - 7) + os.environ[{secret_var!r}])\n"


def reply(action: str, data: str, notes: str = "") -> str:
    return json.dumps({"action": action, "data": data, "notes": notes})


class Search:
    """Counts each needle in everything a run directory, Ray's logs and the commands' output hold."""

    def __init__(self, needles: dict[str, list[str]]) -> None:
        self.needles = needles
        self.hits: dict[str, dict[str, int]] = {name: {} for name in needles}
        self.scanned: dict[str, int] = {}

    def text(self, medium: str, text: str) -> None:
        self.scanned[medium] = self.scanned.get(medium, 0) + 1
        lowered = text.lower()
        for name, variants in self.needles.items():
            n = sum(lowered.count(v.lower()) for v in variants)
            if n:
                self.hits[name][medium] = self.hits[name].get(medium, 0) + n

    def blob(self, medium: str, data: bytes) -> None:
        self.text(medium, data.decode("latin-1"))

    def sqlite(self, path: Path) -> None:
        db = sqlite3.connect(path)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, bytes):
                        self.blob("sqlite", value)
                    elif value is not None:
                        self.text("sqlite", str(value))
        db.close()

    def parquet(self, path: Path) -> None:
        for row in pq.read_table(path).to_pylist():
            for value in row.values():
                if isinstance(value, list) and value and all(isinstance(x, int) and 0 <= x < 256 for x in value):
                    self.blob("parquet", bytes(value))  # scripted token ids are the reply's bytes
                self.text("parquet", json.dumps(value, default=str))

    def git(self, repo: Path) -> None:
        out = subprocess.run(["git", "-C", str(repo), "cat-file", "--batch-all-objects", "--batch"],
                             capture_output=True, check=True).stdout
        self.blob("git", out)

    def tree(self, root: Path, medium: str) -> None:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    self.blob(medium, path.read_bytes())
                except OSError:
                    pass


def run_cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "ouroboros", *args], capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, (args, proc.stderr[-3000:])
    return proc


@pytest.mark.slow
def test_canaries_never_land_in_anything_a_run_writes(tiny_model_path, tmp_path, openai_server):
    require_bwrap()
    started = time.time()
    secret = "cnry" + secrets.token_hex(12)  # the sandbox credential
    host_only = "host" + secrets.token_hex(12)  # in the host environment, named by nothing
    api_key = "sk-" + secrets.token_hex(16)  # the API model's key
    plain = "plainctl" + secrets.token_hex(8)  # a plain sandbox setting: allowed to be recorded
    env = dict(os.environ, OUROBOROS_CANARY_TOKEN=secret, OUROBOROS_CANARY_HOST=host_only,
               OUROBOROS_CANARY_API_KEY=api_key)
    out = tmp_path / "run"
    common = ["--out", str(out), "--set", "sandbox.env_from={SERVICE_TOKEN: OUROBOROS_CANARY_TOKEN}",
              "--set", f"sandbox.env={{PLAIN_SETTING: {plain}}}", "--set", f"sandbox.output_bytes={OUTPUT_CAP}"]
    leak = leak_program("SERVICE_TOKEN", "PLAIN_SETTING")
    # A reply that carries the secret as model text, as a model that somehow learnt it would.
    # It lives in a script file outside the run directory, so the config records only the path.
    script = tmp_path / "script.jsonl"
    replies = [reply("run", leak, "try every encoding"), reply("run", cap_cutter("SERVICE_TOKEN"), "cut it"),
               reply("run", "print(open('leak.txt').read())\nraise SystemExit('token ' + open('leak.txt').read())",
                     "read it back"),
               reply("run", f"print('{secret}')", f"I remember the token {secret}"),
               reply("finalize", "done", "nothing found")]
    script.write_text("".join(json.dumps({"text": r}) + "\n" for r in replies))
    outputs = []

    # 1. The tasks environment, one learning round: rows, pairs, shards, a published version.
    outputs.append(run_cli(["run", "configs/smoke.yaml", "--rounds", "1", *common,
                            "--set", "generator.backend=scripted", "--set", f"generator.script_file={script}",
                            "--set", "generator.max_new_tokens=4096", "--set", "env.train_tasks_per_round=2",
                            "--set", "env.heldout_tasks=2"], env))
    # 2. The experiment environment: cycles, steps, traces, FTS, git, shards.
    outputs.append(run_cli(["run", "configs/smoke-run-experiment.yaml", "--rounds", "0", *common,
                            "--set", "generator.backend=scripted", "--set", f"generator.script_file={script}",
                            "--set", "experiment.max_new_tokens=4096", "--set", "experiment.max_actions=5",
                            "--set", "experiment.max_errors=5"], env))
    # 3. Experiment cycles driven by an API model whose key is a canary.
    openai_server.expected_key = api_key
    openai_server.script(*replies[:3], replies[4], *replies[:3], replies[4])
    outputs.append(run_cli(["experiment", "configs/smoke-experiment.yaml", "--cycles", "2", "--parallel", "2",
                            *common, "--set", "generator.backend=openai", "--set", "generator.api.model=gpt-test",
                            "--set", f"generator.api.base_url={openai_server.base_url}",
                            "--set", "generator.api.api_key_env=OUROBOROS_CANARY_API_KEY",
                            "--set", "experiment.max_actions=4", "--set", "experiment.max_errors=4"], env))

    search = Search({"secret": forms(secret), "host_only": forms(host_only), "api_key": forms(api_key),
                     "plain": forms(plain)})
    search.sqlite(out / "ouroboros.db")
    for shard in out.rglob("*.parquet"):
        search.parquet(shard)
    search.git(out / "experiments")
    search.tree(out, "files")
    for session in Path("/tmp/ray").glob("session_2*"):
        if session.is_dir() and not session.is_symlink() and session.stat().st_mtime >= started - 5:
            search.tree(session / "logs", "ray-logs")
    for proc in outputs:
        search.text("stdout", proc.stdout)
        search.text("stderr", proc.stderr)

    assert search.hits["secret"] == {}, search.hits["secret"]
    assert search.hits["host_only"] == {}, search.hits["host_only"]
    assert search.hits["api_key"] == {}, search.hits["api_key"]
    # The search sees what is there: the plain setting, printed the same ways, is found in every
    # medium the runs wrote it to, and Ray's logs and the outputs were read.
    for medium in ("sqlite", "parquet", "git", "files"):
        assert search.hits["plain"].get(medium, 0) > 0, (medium, search.hits["plain"])
    assert search.scanned.get("ray-logs", 0) > 0 and search.scanned.get("parquet", 0) > 0
    # The key went where the config sends it, to the provider, and was found there.
    sent = Search({"api_key": forms(api_key)})
    for recorded in openai_server.posts:
        sent.text("requests", json.dumps(recorded.headers))
    assert sent.hits["api_key"].get("requests", 0) > 0
    # The secret-bearing reply was redacted where it arrived, and the runs say so.
    db = sqlite3.connect(out / "ouroboros.db")
    notes = " ".join(n or "" for (n,) in db.execute("SELECT notes FROM steps"))
    assert "[redacted:SERVICE_TOKEN]" in notes
    config = json.loads(db.execute("SELECT config FROM runs LIMIT 1").fetchone()[0])
    assert config["sandbox"]["env_from"] == {"SERVICE_TOKEN": "OUROBOROS_CANARY_TOKEN"}
    assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 3  # three runs side by side

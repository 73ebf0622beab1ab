"""`experiments/`: a git repository with one commit per experiment.

Each experiment is a directory `NNNNNN/` holding its run actions' code, its Dockerfile, the
results, the notes and a log; the commit message names the experiment and how it ended.

- Hooks never run: the repository's own `core.hooksPath` points at an empty directory and each
  commit passes `--no-verify`, so a file a model wrote cannot become a hook.
- Cycles commit concurrently: an exclusive `flock` on `experiments.lock` (beside it) serializes
  `git add` + `git commit`, and each commit stages only its experiment's directory.
- The identity is fixed in the repository config, so commits work on hosts without a global one.
- git runs with a scrubbed environment: nothing from ours (API keys included) reaches it.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")


class GitError(RuntimeError):
    pass


class ExperimentRepo:
    def __init__(self, path: str | Path) -> None:
        if shutil.which("git") is None:
            raise GitError("git is not installed: apt-get install -y git")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP}
        self._env.update(GIT_TERMINAL_PROMPT="0", GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null")
        with self._lock():
            if not (self.path / ".git" / "HEAD").is_file():
                self._git("init", "-q")
            hooks = self.path / ".git" / "no-hooks"
            hooks.mkdir(exist_ok=True)
            for key, value in (("core.hooksPath", str(hooks)), ("user.name", "Ouroboros"),
                               ("user.email", "ouroboros@localhost"), ("commit.gpgsign", "false")):
                self._git("config", key, value)

    def _lock(self):
        # Beside the repository, not in .git: the lock must exist before `git init` has run.
        fh = open(self.path.with_name(self.path.name + ".lock"), "a")

        class Held:
            def __enter__(self):
                fcntl.flock(fh, fcntl.LOCK_EX)

            def __exit__(self, *_):
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()

        return Held()

    def _git(self, *args: str) -> str:
        proc = subprocess.run(["git", "-C", str(self.path), *args], capture_output=True, text=True,
                              env=self._env, timeout=120)
        if proc.returncode != 0:
            raise GitError(f"git {args[0]} failed ({proc.returncode}): {proc.stderr.strip()[:500]}")
        return proc.stdout

    def commit_experiment(self, experiment_id: int, files: dict[str, str], message: str) -> str:
        """Write `files` under the experiment's directory and commit them. Returns the commit id."""
        folder = f"{experiment_id:06d}"
        base = self.path / folder
        with self._lock():
            base.mkdir(exist_ok=True)
            for name, text in files.items():
                target = (base / name).resolve()
                if base.resolve() not in target.parents:
                    raise GitError(f"experiment file {name!r} is outside its directory")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8", errors="replace")
            self._git("add", "--", folder)
            self._git("commit", "-q", "--no-verify", "--allow-empty", "-m", message, "--", folder)
            return self._git("rev-parse", "HEAD").strip()

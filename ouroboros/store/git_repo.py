"""`experiments/`: a git repository with one commit per experiment.

Each experiment is a directory `NNNNNN/` holding its run actions' code, its Dockerfile, the
results, the notes and a log; the commit message names the experiment and how it ended.

- Hooks never run: fast-import runs none, and the repository's own `core.hooksPath` points at
  an empty directory for any git command run there later, so a file a model wrote cannot
  become a hook.
- `git fast-import` writes the experiments' files as objects and their commits on top of the
  branch, without `git add`: no index to read and rewrite, whose size grows with every
  experiment, and no scan of the working tree. One process commits a whole batch
  (`commit_many`; `committer.py` batches what many cycles finish at once). Small imports
  become loose objects (`fastimport.unpackLimit`), so commits do not pile up packs.
- The files are also written to the working tree, for browsing. The index is brought up to
  date once, by `sync_index()` when a run ends, so `git status` is clean after it.
- Cycles commit concurrently: an exclusive `flock` on `experiments.lock` (beside it) serializes
  the commits.
- The identity is fixed in the repository config, so commits work on hosts without a global one.
- git runs with a scrubbed environment: nothing from ours (API keys included) reaches it.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from pathlib import Path

_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")


def _git_env() -> dict[str, str]:
    """The environment git runs with: nothing of ours but the basics, no prompt, no system or
    user config."""
    env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null")
    return env


class GitError(RuntimeError):
    pass


class ExperimentRepo:
    def __init__(self, path: str | Path) -> None:
        if shutil.which("git") is None:
            raise GitError("git is not installed: apt-get install -y git")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._env = _git_env()
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

    def _git(self, *args: str, input: bytes | None = None) -> str:
        proc = subprocess.run(["git", "-C", str(self.path), *args], capture_output=True, input=input,
                              env=self._env, timeout=120)
        if proc.returncode != 0:
            stderr = proc.stderr.decode("utf-8", errors="replace").strip()
            raise GitError(f"git {args[0]} failed ({proc.returncode}): {stderr[:500]}")
        return proc.stdout.decode("utf-8", errors="replace")

    def commit_experiment(self, experiment_id: int, files: dict[str, str], message: str) -> str:
        """Write `files` under the experiment's directory and commit them. Returns the commit id."""
        return self.commit_many([(experiment_id, files, message)])[0]

    def commit_many(self, experiments: list[tuple[int | str, dict[str, str], str]]) -> list[str]:
        """One commit per (experiment id, files, message), in order, from one `git fast-import`.
        An int id is the directory `NNNNNN/`, a str id the directory of that name. Returns the commit ids."""
        root = self.path.resolve()
        batch = []
        for experiment_id, files, message in experiments:
            folder = f"{experiment_id:06d}" if isinstance(experiment_id, int) else str(experiment_id)
            if not folder or "/" in folder or folder.startswith("."):
                raise GitError(f"bad directory name {folder!r} for a commit")
            base = root / folder
            blobs: list[tuple[str, bytes]] = []
            for name, text in files.items():
                target = (base / name).resolve()
                if base not in target.parents:
                    raise GitError(f"experiment file {name!r} is outside its directory")
                blobs.append((target.relative_to(root).as_posix(), text.encode("utf-8", errors="replace")))
            batch.append((folder, blobs, message))
        with self._lock():
            branch = self._branch()
            tip = self._tip(branch)
            stream: list[bytes] = []
            for mark, (folder, blobs, message) in enumerate(batch, 1):
                for path, data in blobs:
                    target = self.path / path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                stream += [f"commit refs/heads/{branch}\nmark :{mark}\n"
                           f"committer Ouroboros <ouroboros@localhost> now\n".encode(), _data(message.encode())]
                # Within one stream the branch's last commit is the parent; the first needs `from`.
                if mark == 1 and tip:
                    stream.append(f"from {tip}\n".encode())
                stream.append(f"D {folder}\n".encode())  # the directory holds exactly these files
                for path, data in blobs:
                    stream += [f"M 100644 inline {_quote(path)}\n".encode(), _data(data)]
                stream.append(b"\n")
            stream += [f"get-mark :{mark}\n".encode() for mark in range(1, len(batch) + 1)]
            stream.append(b"done\n")
            out = self._git("fast-import", "--quiet", "--done", "--date-format=now", input=b"".join(stream))
        commits = out.split()
        if len(commits) != len(batch):
            raise GitError(f"git fast-import reported {len(commits)} commits for {len(batch)} experiments")
        return commits

    def _tip(self, branch: str) -> str | None:
        """The branch's commit id, read from the ref files (no git process), or None before the first."""
        git = self.path / ".git"
        loose = git / "refs" / "heads" / branch
        if loose.is_file():
            return loose.read_text().strip()
        packed = git / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                sha, _, ref = line.partition(" ")
                if ref == f"refs/heads/{branch}":
                    return sha
        return None

    def _branch(self) -> str:
        head = (self.path / ".git" / "HEAD").read_text().strip()
        if not head.startswith("ref: refs/heads/"):
            raise GitError(f"{self.path} has a detached HEAD ({head[:40]}); check out a branch there")
        return head[len("ref: refs/heads/"):]

    def sync_index(self) -> None:
        """Make the index match HEAD (commits bypass it), so `git status` is clean."""
        with self._lock():
            if self._tip(self._branch()):
                self._git("reset", "-q")


def show_commit(repo: str | Path, commit: str, limit: int = 200_000) -> str | None:
    """`git show` of one experiment's commit (its message, the files it changed and the diff),
    read-only, cut to `limit` characters; None when `repo` is no repository or has no such commit.
    The viewer calls this: `commit` comes from the run's DB, so only a plain commit id is taken,
    never something git would read as an option or a revision expression, and no diff driver or
    text conversion a config could name runs."""
    if not re.fullmatch(r"[0-9a-f]{7,64}", commit or "") or not (Path(repo) / ".git").is_dir():
        return None
    try:
        proc = subprocess.run(["git", "-C", str(repo), "show", "--no-color", "--no-ext-diff", "--no-textconv",
                               "--stat", "--patch", "--format=fuller", f"{commit}^{{commit}}", "--"],
                              capture_output=True, env=_git_env(), timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    text = proc.stdout.decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[:limit] + f"\n… (cut at {limit:,} of {len(text):,} characters)"


def _data(payload: bytes) -> bytes:
    return f"data {len(payload)}\n".encode() + payload + b"\n"


def _quote(path: str) -> str:
    """A fast-import path: C-style quoted when it holds characters the format would misread."""
    if not any(c in path for c in ' "\\\n') and not path.startswith('"'):
        return path
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

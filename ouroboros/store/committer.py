"""Committer: git commits of finished experiments, off the cycles' critical path, in batches.

A cycle that has written its experiment row hands the files to the Committer and returns; one
thread per process commits whatever has queued up with one `git fast-import`
(`ExperimentRepo.commit_many`) and records each commit id on its row. So 32 cycles finishing
together cost a few git processes, not 32 turns at the repository lock, and no cycle waits
for git before its slot starts the next experiment.

`flush()` waits until everything queued is committed: the experiment driver calls it before a
run ends, so every finished experiment has its commit. A batch that fails is logged to the
experiments log and retried one experiment at a time, so one bad experiment does not cost the
others their commits; its row keeps `git_commit` empty.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from ouroboros.store.git_repo import ExperimentRepo, GitError

log = logging.getLogger(__name__)


class Committer:
    def __init__(self, repo: ExperimentRepo, db_path: str | Path, log_path: str | None = None,
                 max_batch: int = 64) -> None:
        self.repo, self.db_path, self.log_path, self.max_batch = repo, Path(db_path), log_path, max_batch
        self._queue: list[tuple[int, dict[str, str], str]] = []
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="experiment-committer", daemon=True)
        self._thread.start()

    def commit_experiment(self, experiment_id: int, files: dict[str, str], message: str) -> None:
        """Queue the experiment's commit; its row gets the commit id once it is made."""
        with self._cond:
            self._queue.append((experiment_id, files, message))
            self._cond.notify_all()

    def flush(self, timeout_s: float = 120.0) -> bool:
        """Wait until every queued experiment is committed. False if `timeout_s` ran out first."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout_s: float = 120.0) -> bool:
        """Commit what is queued, then stop the thread (an agent used as a plain object, in a
        test or a script, gives its threads back). False if the queue did not drain in time."""
        drained = self.flush(timeout_s)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        return drained

    def _run(self) -> None:
        from ouroboros.store.experiments import ExperimentStore

        store = ExperimentStore(self.db_path)
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:  # closed, and nothing left to commit
                    store.close()
                    return
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
                self._busy = True
            try:
                for (eid, _, _), commit in self._commit(batch):
                    if commit:
                        store.set_commit(eid, commit)
            except Exception as exc:  # the store itself failed: keep the thread alive
                log.error("recording experiment commits failed: %s", exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _commit(self, batch: list) -> list[tuple[tuple, str | None]]:
        try:
            return list(zip(batch, self.repo.commit_many(batch)))
        except (GitError, OSError) as exc:
            if len(batch) == 1:
                self._log(f"git commit of experiment {batch[0][0]} failed: {exc}")
                return [(batch[0], None)]
        # A batch failed: commit one by one, so one bad experiment costs only its own commit.
        return [pair for item in batch for pair in self._commit([item])]

    def _log(self, line: str) -> None:
        log.warning(line)
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} committer: {line}\n")

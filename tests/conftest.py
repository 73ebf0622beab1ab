
# --- loopback fakes of the Anthropic / OpenAI HTTP APIs (tests/api_servers.py) -------
import ipaddress as _ipaddress
import socket as _socket

import pytest as _pytest

try:  # tests/ as a package, or tests/ on sys.path (pytest's default "prepend" mode)
    from tests.api_servers import FakeAnthropicServer, FakeOpenAIServer
except ImportError:  # pragma: no cover
    from api_servers import FakeAnthropicServer, FakeOpenAIServer

_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def _is_loopback(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths and the like
        return True
    host = address[0]
    if host == "localhost":
        return True
    try:
        return _ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@_pytest.fixture
def loopback_only(monkeypatch):
    """Fail any socket connection to a non-loopback address; clear proxy/base-URL env vars."""
    for var in _PROXY_VARS + ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost,::1")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost,::1")
    real_connect, real_connect_ex = _socket.socket.connect, _socket.socket.connect_ex

    def guard(address):
        if not _is_loopback(address):
            raise AssertionError(f"test tried to reach non-loopback address {address!r}")

    def connect(self, address):
        guard(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        guard(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(_socket.socket, "connect", connect)
    monkeypatch.setattr(_socket.socket, "connect_ex", connect_ex)


@_pytest.fixture
def anthropic_server(loopback_only):
    """A FakeAnthropicServer on 127.0.0.1; pass `.base_url` to the backend."""
    with FakeAnthropicServer() as server:
        yield server


@_pytest.fixture
def openai_server(loopback_only):
    """A FakeOpenAIServer on 127.0.0.1; pass `.base_url` (ends in /v1) to the backend."""
    with FakeOpenAIServer() as server:
        yield server


# --- engine fixtures: the tiny model, configs, a sandbox --------------------------------
import os as _os
import shutil as _shutil


@_pytest.fixture(scope="session")
def tiny_model_path():
    """The tiny test policy (built once into the cache; `make test` prepares it first)."""
    from ouroboros.models import tiny

    return str(tiny.prepare())


_ALIGN_RATING: dict = {}


@_pytest.fixture(scope="session")
def align_smoke_run(tiny_model_path, tmp_path_factory):
    """One alignment smoke run (`ouroboros align loop configs/smoke-align.yaml`, through Ray) shared by the
    loop's tests, the viewer's browser tests and the live-rating test: its run directory. While it
    runs, once its first training candidates are stored, a person rates one pair of them in the
    viewer (`align_smoke_rating` says which), as a user would during a run."""
    import subprocess
    import sys
    import time

    out = tmp_path_factory.mktemp("align") / "out"
    data = out.parent / "data"
    proc = subprocess.Popen([sys.executable, "-m", "ouroboros", "align", "loop", "configs/smoke-align.yaml",
                             "--out", str(out), "--set", f"align.data_dir={data}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while _train_rows(out / "ouroboros.db") == 0:
            if proc.poll() is not None:
                break  # failed before training: the assert below shows why
            assert time.monotonic() < deadline, "no training candidates after 240 s"
            time.sleep(0.2)
        if proc.poll() is None:
            _ALIGN_RATING.update(_rate_first_pair(out), rated_while_running=proc.poll() is None)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    return out


@_pytest.fixture(scope="session")
def align_smoke_rating(align_smoke_run) -> dict:
    """The pair rated in the viewer during the shared alignment run: {"a", "b"} (a won), and
    whether the run was still going when the rating was stored."""
    assert _ALIGN_RATING, "the shared alignment run reached no training candidates to rate"
    return dict(_ALIGN_RATING)


def _train_rows(db_path) -> int:
    import sqlite3

    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute("SELECT COUNT(*) FROM completions WHERE phase='train'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0  # not created yet


def viewer_client(out):
    """Starlette's test client on `ouroboros view OUT`, signed in with the viewer's token."""
    from starlette.testclient import TestClient

    from ouroboros.view.server import create_app

    token = "live-test-token"
    return TestClient(create_app([str(out)], token), base_url="http://127.0.0.1:8765",
                      cookies={"ouroboros_token": token})


def _rate_first_pair(out) -> dict:
    """Prefer the first pair of the viewer's rating queue's "a", through the viewer's own pages."""
    with viewer_client(out) as client:
        run_id = (out / "latest").resolve().name
        queue = client.get(f"/d/0/run/{run_id}/rate")
        key = queue.text.split('<section class="pair" data-key="')[1].split('"')[0]
        csrf = queue.text.split('name="csrf" value="')[1].split('"')[0]
        a, b = key.split("|")
        stored = client.post(f"/d/0/run/{run_id}/rate/pair", data={"csrf": csrf, "a": a, "b": b, "winner": "a"},
                             follow_redirects=False)
        assert stored.status_code == 303, stored.text[-2000:]
    return {"a": a, "b": b}


@_pytest.fixture(scope="session")
def killed_actors_run(tiny_model_path, tmp_path_factory):
    """A smaller smoke run with 10 random kills of its generators, runners, judges and agents
    (tests/fault_run.py), shared by the fault tests and the resume test, which compares with it."""
    try:
        from tests.fault_run import run_with_kills
    except ImportError:  # pragma: no cover
        from fault_run import run_with_kills

    require_bwrap()
    return run_with_kills(tmp_path_factory.mktemp("faults") / "run", processes_tagged)


@_pytest.fixture
def tiny_cfg(tmp_path):
    from ouroboros.config import load_config

    return load_config("configs/smoke.yaml", [f"run.out={tmp_path / 'run'}"])


def require_bwrap():
    """Skip without bwrap, unless CI said a missing sandbox is a failure."""
    if _shutil.which("bwrap") is None:
        if _os.environ.get("OUROBOROS_REQUIRE_SANDBOX") == "1":
            _pytest.fail("bwrap is required here (OUROBOROS_REQUIRE_SANDBOX=1): apt-get install -y bubblewrap")
        _pytest.skip("bwrap is not installed (apt-get install -y bubblewrap)")


def interruptible_popen(args, **kwargs):
    """Start a child as a terminal would: in its own process group, with SIGINT at its default.
    A shell that starts jobs in the background without job control leaves SIGINT ignored in
    them, and an ignored disposition is inherited across exec: the child would never see the
    test's Ctrl-C, and the test would hang."""
    import signal
    import subprocess

    def default_sigint():
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return subprocess.Popen(args, start_new_session=True, preexec_fn=default_sigint, **kwargs)


def processes_tagged(tag: str) -> list[int]:
    """Live host processes whose environment carries `tag`: how sandbox tests find what a
    sandboxed program left running (docker's programs are host processes too)."""
    pids = []
    for name in _os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                if fh.read().rpartition(b")")[2].split()[0] == b"Z":
                    continue  # dead already, waiting to be reaped
            with open(f"/proc/{name}/environ", "rb") as fh:
                if tag.encode() in fh.read():
                    pids.append(int(name))
        except (OSError, IndexError):
            pass
    return pids


# --- two workers on a 2-core machine (`make test`: pytest-xdist, -n 2 --dist loadgroup) ---------
# A whole run (Ray, sandboxes, a model) leaves a core idle about a quarter of the time (process
# starts, sandbox and engine waits), which the other worker fills. Tests are spread one by one,
# except those sharing an expensive session fixture: they go to one worker, so it is built once.
# Tests of a run's processes find them by a tag in their environment, never by looking at the
# whole host, since the other worker's runs and sandboxes are there too.
SHARED_FIXTURE_GROUPS = {"align_smoke_run": "align-smoke-run", "killed_actors_run": "killed-actors-run"}
# Modules whose module-scoped fixtures cost seconds (a vLLM engine; every bundled goal's references
# run in a sandbox): each was built once per worker, about 20 s and 8 s twice.
SHARED_MODULE_GROUPS = ("test_vllm_backend.py", "test_forging_review_experiment.py")


@_pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture, group in SHARED_FIXTURE_GROUPS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(_pytest.mark.xdist_group(group))
        if item.path.name in SHARED_MODULE_GROUPS:
            item.add_marker(_pytest.mark.xdist_group(item.path.stem))


def pytest_collection_finish(session):
    """Refuse to run with the groups silently ignored (pytest-xdist and pytest out of step: the
    shared fixtures would be built once per worker)."""
    grouped = [i for i in session.items if any(True for _ in i.iter_markers("xdist_group"))]
    if grouped and _os.environ.get("PYTEST_XDIST_WORKER") and session.config.getvalue("loadgroup") \
            and "@" not in grouped[0].nodeid:
        raise _pytest.UsageError("pytest-xdist ignored the xdist_group marks: install the pytest and pytest-xdist "
                                 "versions requirements.txt pins")


# --- tests that spawn hundreds of sandboxes run in a fresh interpreter --------------------------
# Each sandbox is started with a preexec_fn (rlimits, cgroups, ids), so Python forks rather than
# vforks, and a fork copies the parent's page tables: an exec that takes 104 ms from a small
# process took 300 ms from one holding 3 GB. A pytest worker that earlier ran a model in-process
# (the vLLM engine tests leave it at about 2 GB) made the bundled goals' check, 820 sandboxed
# runs, take 96 s instead of 24 s (160 s in a full suite). Marked tests (`fresh_process`) run in a
# new pytest process of their own, which costs a second or two of start-up.
_FRESH = "OUROBOROS_FRESH_PROCESS"


@_pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if pyfuncitem.get_closest_marker("fresh_process") is None or _os.environ.get(_FRESH) == "1":
        return None
    import subprocess
    import sys

    env = {k: v for k, v in _os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env[_FRESH] = "1"
    node = pyfuncitem.nodeid.split("@")[0]  # without xdist's group suffix
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:xdist",
                           node], cwd=str(pyfuncitem.config.rootpath), env=env, capture_output=True, text=True)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode == 0 and "1 skipped" in summary and "passed" not in summary:
        why = [line.split(": ", 1)[-1] for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
        _pytest.skip(f"skipped in its fresh process: {why[0] if why else summary}")
    if proc.returncode != 0 or "1 passed" not in summary:
        _pytest.fail(f"{node} failed in its fresh process (exit {proc.returncode}):\n{proc.stdout[-6000:]}\n"
                     f"{proc.stderr[-2000:]}", pytrace=False)
    return True

"""bwrap- and process-specific behaviour: cgroups, rlimits, bwrap set-up failures, the unsafe flag.

The behaviour every backend shares, and the attack suite, are in test_sandbox_conformance.py.

Hostile programs (fork bombs, escapes, network probes) only ever run inside bwrap. The
`process` backend (no isolation) only runs programs that are bounded by its rlimits.

Where bwrap is missing these tests skip, unless OUROBOROS_REQUIRE_SANDBOX=1 (CI), where they
fail instead.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time

import pytest

from conftest import processes_tagged

from ouroboros.sandbox import Limits, SandboxUnavailable, sandbox_class
from ouroboros.sandbox import runner
from ouroboros.sandbox.bwrap import BwrapSandbox
from ouroboros.sandbox.process import ProcessSandbox

REQUIRE = os.environ.get("OUROBOROS_REQUIRE_SANDBOX") == "1"
TAG = f"ouroboros-test-{secrets.token_hex(6)}"  # in every sandboxed program's environment
LIMITS = Limits(timeout_s=5.0, memory_mb=256, pids=32, output_bytes=64 * 1024, disk_mb=16)


@pytest.fixture(scope="module")
def bwrap() -> BwrapSandbox:
    try:
        sandbox = BwrapSandbox(limits=LIMITS, env={"OUROBOROS_TAG": TAG})
    except SandboxUnavailable as exc:
        if REQUIRE:
            pytest.fail(f"OUROBOROS_REQUIRE_SANDBOX=1 but bwrap is unavailable: {exc}")
        pytest.skip(f"bwrap unavailable: {exc}")
    yield sandbox
    sandbox.cleanup()


@pytest.fixture(scope="module")
def process() -> ProcessSandbox:
    sandbox = ProcessSandbox(limits=LIMITS, env={"OUROBOROS_TAG": TAG}, unsafe=True)
    yield sandbox
    sandbox.cleanup()


@pytest.fixture(params=["bwrap", "process"])
def sandbox(request):
    return request.getfixturevalue(request.param)


def tagged_pids() -> list[int]:
    return processes_tagged(TAG)


def assert_nothing_left(within_s: float = 1.0) -> None:
    deadline = time.monotonic() + within_s
    while tagged_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tagged_pids() == []


# ----------------------------------------------------------------------------- both backends


def test_cpu_rlimit_counts_as_timeout(sandbox):
    # The CPU limit ends it, long before the wall-clock one: a second of CPU took 4.4 s of wall
    # time on a loaded 2-core host, so the wall limit is far away rather than near.
    result = sandbox.exec("while True: pass", limits=LIMITS.override(cpu_s=1, timeout_s=60.0))
    assert result.timed_out and not result.oom, result
    assert result.duration_s < 30.0, result


# ----------------------------------------------------------------------------- bwrap isolation


def test_registry_names_the_backends():
    assert sandbox_class("bwrap") is BwrapSandbox
    assert sandbox_class("process") is ProcessSandbox


def test_network_is_unreachable(bwrap):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(5)
    port = listener.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: _accept(listener, accepted), daemon=True)
    thread.start()
    probe = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')\n"
        "    print('CONNECTED')\n"
        "except OSError as exc:\n"
        "    print('BLOCKED', type(exc).__name__)\n"
    )
    try:
        result = bwrap.exec(probe)
        assert result.stdout.startswith("BLOCKED"), result
        # The same probe with the network shared does connect: the test can tell the difference.
        shared = BwrapSandbox(limits=LIMITS, network=True)
        assert shared.exec(probe).stdout.startswith("CONNECTED")
        thread.join(5)
        assert len(accepted) == 1
    finally:
        listener.close()


def _accept(listener: socket.socket, accepted: list) -> None:
    try:
        while True:
            conn, _ = listener.accept()
            accepted.append(conn)
            conn.close()
            return
    except OSError:
        pass


def test_host_files_are_not_visible(bwrap, tmp_path):
    secret = secrets.token_hex(8)  # the canaries' content; their names are in the program
    canaries = [tmp_path / "canary.txt", f"/root/ouroboros-canary-{secrets.token_hex(6)}.txt"]
    for path in canaries:
        with open(path, "w") as fh:
            fh.write(secret)
    try:
        program = (
            "import os\n"
            f"for path in {[str(p) for p in canaries]!r} + ['/etc/passwd', '/etc/shadow', '/root', '/home']:\n"
            "    try:\n"
            "        print(path, 'READ', open(path).read()[:40])\n"
            "    except OSError as exc:\n"
            "        print(path, 'DENIED', type(exc).__name__)\n"
            "print(sorted(os.listdir('/')))\n"
        )
        result = bwrap.exec(program)
        assert result.exit_code == 0, result
        assert secret not in result.stdout and "READ" not in result.stdout, result.stdout
        assert result.stdout.splitlines()[-1] == str(sorted(["bin", "dev", "lib", "lib64", "proc", "sbin", "tmp", "usr", "work"]))
    finally:
        os.unlink(canaries[1])


def test_runs_as_non_root(bwrap):
    result = bwrap.exec("import os; print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups())")
    uid, euid, gid, *_ = result.stdout.split()
    assert (uid, euid, gid) == ("65534", "65534", "65534")
    # Seen from the host, the sandboxed program is not root either (bwrap run by root would map
    # it to host uid 0, so the backend starts bwrap as a throwaway unprivileged uid).
    found: list[int] = []
    thread = threading.Thread(target=lambda: found.append(bwrap.exec("import time; time.sleep(1.5)").exit_code))
    thread.start()
    try:
        deadline = time.monotonic() + 1.4
        host_uids = set()
        while not host_uids and time.monotonic() < deadline:
            host_uids = {os.stat(f"/proc/{pid}").st_uid for pid in tagged_pids()}
            time.sleep(0.02)
    finally:
        thread.join()
    assert found == [0] and host_uids
    if bwrap.fresh_uid or os.geteuid() != 0:  # else bwrap fell back to running as root (logged)
        assert 0 not in host_uids


def test_file_size_limit(bwrap):
    program = (
        "try:\n"
        "    open('big', 'wb').write(b'x' * (64 << 20))\n"
        "    print('WROTE')\n"
        "except OSError as exc:\n"
        "    print('LIMITED', exc.errno)\n"
    )
    result = bwrap.exec(program)
    assert result.stdout.startswith("LIMITED"), result


def test_fork_bomb_is_contained_by_rlimits_alone(bwrap, monkeypatch):
    # As on a host without usable cgroups: RLIMIT_NPROC must hold on its own. (Run by root,
    # bwrap would map the program to host uid 0, where the kernel ignores NPROC.)
    monkeypatch.setattr(runner, "cgroup_bases", lambda: {})
    program = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = bwrap.exec(program, limits=LIMITS.override(timeout_s=1.5, pids=24))
    assert result.timed_out, result
    assert_nothing_left()
    assert bwrap.exec("print('alive')").stdout == "alive\n"


def test_memory_cgroup_oom_kill_is_reported(bwrap):
    if "memory" not in runner.cgroup_bases():
        if REQUIRE:
            pytest.fail("memory cgroup unusable on this host")
        pytest.skip("memory cgroup unusable on this host")
    # Each child stays under RLIMIT_AS (per process) but together they exceed the cgroup limit.
    program = (
        "import os, time\n"
        "kids = []\n"
        "for _ in range(4):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        block = bytearray(b'\\x01') * (120 << 20)\n"
        "        time.sleep(1)\n"
        "        os._exit(0)\n"
        "    kids.append(pid)\n"
        "codes = [os.waitpid(pid, 0)[1] for pid in kids]\n"
        "print(codes)\n"
    )
    # 30 s, not 5: on a loaded host the children fill the cgroup slowly (reclaim before the OOM
    # kill), and the test is about the kill being reported, not its speed.
    result = bwrap.exec(program, limits=LIMITS.override(memory_mb=256, timeout_s=30.0))
    assert result.oom and not result.timed_out, result


def test_forged_bwrap_error_is_the_programs_own(bwrap):
    result = bwrap.exec("import sys; sys.stderr.write('bwrap: pretend setup failure\\n'); sys.exit(1)")
    assert result.exit_code == 1 and result.stderr.startswith("bwrap: pretend")


def test_bwrap_setup_failure_raises_unavailable(bwrap):
    # Too few pids for bwrap's own process and the program (a cold exec's program is the
    # sandbox's pid 1, with no bwrap init beside it): bwrap itself cannot start, which is the
    # harness's problem (config), not the program's.
    with pytest.raises(SandboxUnavailable, match="bwrap: "):
        bwrap.exec("print('never')", limits=LIMITS.override(pids=1))


def test_missing_bwrap_names_the_package(monkeypatch):
    monkeypatch.setattr("ouroboros.sandbox.bwrap.shutil.which", lambda name: None)
    with pytest.raises(SandboxUnavailable, match="apt-get install -y bubblewrap"):
        BwrapSandbox()


def test_no_cgroups_left_behind(bwrap):
    bwrap.exec("pass")
    bwrap.exec("while True: pass", limits=LIMITS.override(timeout_s=0.3))
    bwrap.cleanup()  # per-exec cgroups whose processes were still exiting go now
    for base in runner.cgroup_bases().values():
        ours = f"{runner.CGROUP_PREFIX}{os.getpid()}-"
        assert [n for n in os.listdir(base) if n.startswith(ours)] == []


# ----------------------------------------------------------------------------- process backend


def test_process_backend_requires_unsafe():
    with pytest.raises(SandboxUnavailable, match="unsafe: true"):
        ProcessSandbox()


def test_process_backend_warns_on_every_exec(process, caplog):
    with caplog.at_level(logging.WARNING, logger="ouroboros.sandbox.process"):
        process.exec("pass")
        process.exec("pass")
    assert sum("WITHOUT isolation" in r.getMessage() for r in caplog.records) == 2


def test_allowlisted_values_are_not_on_any_command_line(bwrap):
    """The env allowlist reaches the program through bwrap's environment, not `--setenv`
    arguments, which every host user can read in `ps`."""
    secret = f"value-{secrets.token_hex(8)}"
    box = BwrapSandbox(limits=LIMITS, env={"OUROBOROS_TAG": TAG, "SERVICE_TOKEN": secret})
    seen: list[str] = []
    thread = threading.Thread(target=lambda: seen.append(box.exec("import os, time; time.sleep(1)\n"
                                                                  "print(os.environ['SERVICE_TOKEN'])").stdout))
    thread.start()
    try:
        time.sleep(0.5)
        cmdlines = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    cmdlines.append(open(f"/proc/{name}/cmdline", "rb").read())
                except OSError:
                    pass
    finally:
        thread.join()
        box.cleanup()
    assert seen == [secret + "\n"]
    assert any(b"bwrap" in c for c in cmdlines) and not any(secret.encode() in c for c in cmdlines)


# ----------------------------------------------------------------------------- warm interpreter


def test_warm_interpreter_behaves_like_python_main_and_survives_its_death(bwrap):
    """What a program sees from a warm session matches `python3 main.py`: argv, __file__, exit
    codes, clean tracebacks, threads joined, atexit run, open files flushed; and an interpreter
    killed between execs is replaced without losing the next program."""
    import signal

    warm = BwrapSandbox(limits=LIMITS, env={"OUROBOROS_TAG": TAG}, warm=True)
    try:
        first = warm.exec("import sys, os\nprint(sys.argv, __file__, __name__, os.getcwd())\n"
                          "f = open('left-open.txt', 'w'); f.write('flushed')\n"
                          "import threading, time, atexit\natexit.register(lambda: print('atexit'))\n"
                          "threading.Thread(target=lambda: (time.sleep(0.2), print('thread'))).start()")
        assert first.exit_code == 0
        assert first.stdout.splitlines() == ["['main.py'] /work/main.py __main__ /work", "thread", "atexit"]
        assert warm.exec("print(open('left-open.txt').read())").stdout == "flushed\n"
        failed = warm.exec("def f():\n    raise ValueError('boom')\nf()")
        assert failed.exit_code == 1 and failed.stderr.startswith("Traceback (most recent call last):\n  File \"/work/main.py\"")
        assert "<string>" not in failed.stderr and "ValueError: boom" in failed.stderr
        assert warm.exec("import sys; sys.exit(7)").exit_code == 7
        assert warm.exec("import sys; sys.exit('bye')").stderr == "bye\n"
        resident = warm.resident_pids()
        assert resident
        for pid in resident:  # the interpreter and its bwrap die between execs
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        again = warm.exec("print('still here')")
        assert again.exit_code == 0 and again.stdout == "still here\n"
        assert warm.resident_pids() and not warm.resident_pids() & resident
    finally:
        warm.cleanup()

"""Conformance and attack suite: every sandbox backend present, held to what it claims.

What each backend claims is declared once, in `ouroboros/sandbox/traits.py` (`TRAITS`): the
interface tests run on all backends; the attacks run on every backend that claims isolation
(`bwrap`, `docker`). The `process` backend claims none, so hostile programs never run there.

Each attack first proves it ran (it prints a marker before attacking). Afterwards the suite
checks that the harness survived (the next exec works), that nothing was left behind (no
process carrying this run's tag, no container with this run's label, no workdir once reset),
and that the result was classified correctly (timed_out / oom / truncated / exit code).

Backends that are missing skip, unless OUROBOROS_REQUIRE_SANDBOX=1 (CI), where they fail.
"""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import threading
import time

import pytest

from conftest import processes_tagged

from ouroboros.sandbox import TRAITS, Limits, SandboxUnavailable, sandbox_class, workdir

REQUIRE = os.environ.get("OUROBOROS_REQUIRE_SANDBOX") == "1"
TAG = f"ouroboros-conf-{secrets.token_hex(6)}"  # in every sandboxed program's environment
RUN_ID = f"test-{secrets.token_hex(4)}"
LIMITS = Limits(timeout_s=5.0, memory_mb=256, pids=32, output_bytes=64 * 1024, disk_mb=16)
FAST = LIMITS.override(timeout_s=2.0)
BACKENDS = ["bwrap", "docker", "process"]
# Each backend, plus bwrap with a warm interpreter (programs fork from it, `sandbox/warm.py`):
# the same claims, so the same suite.
VARIANTS = ["bwrap", "bwrap-warm", "docker", "process"]
ISOLATED = [name for name in VARIANTS if TRAITS[name.split("-")[0]].isolated]


def make(name: str, **kwargs):
    kwargs = {"limits": LIMITS, "env": {"OUROBOROS_TAG": TAG}, **kwargs}
    if name == "bwrap-warm":
        name, kwargs["warm"] = "bwrap", True
    if name == "process":
        kwargs["unsafe"] = True
    if name == "docker":
        kwargs["run_id"] = RUN_ID
    return sandbox_class(name)(**kwargs)


_made: dict[str, object] = {}


def get_sandbox(name: str):
    if name not in _made:
        try:
            _made[name] = make(name)
        except SandboxUnavailable as exc:
            if REQUIRE:
                pytest.fail(f"OUROBOROS_REQUIRE_SANDBOX=1 but the {name} sandbox is unavailable: {exc}")
            pytest.skip(f"{name} sandbox unavailable: {exc}")
    return _made[name]


@pytest.fixture(scope="module", autouse=True)
def _cleanup_all():
    yield
    for sandbox in _made.values():
        sandbox.cleanup()
    _made.clear()
    assert our_containers() == []


@pytest.fixture(params=VARIANTS)
def sandbox(request):
    box = get_sandbox(request.param)
    box.reset()  # each test is its own experiment
    yield box
    box.reset()


@pytest.fixture(params=ISOLATED)
def isolated(request):
    box = get_sandbox(request.param)
    box.reset()
    yield box
    box.reset()


def tagged_pids() -> list[int]:
    return processes_tagged(TAG)


def our_containers() -> list[str]:
    if "docker" not in _made:
        return []
    client = _made["docker"].client
    return [c.short_id for c in client.containers.list(all=True, filters={"label": f"ouroboros.run={RUN_ID}"})]


def assert_survived(box, within_s: float = 10.0) -> None:
    """The harness still works and no process of the program is alive."""
    deadline = time.monotonic() + within_s

    def left() -> list[int]:  # a warm sandbox's own bwrap and interpreter are not the program's
        return sorted(set(tagged_pids()) - box.resident_pids())

    while left() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left() == [], "a sandboxed process outlived its exec"
    after = box.exec("print('still-ok')")
    assert after.stdout == "still-ok\n" and after.exit_code == 0, after


def marked(body: str) -> tuple[str, str]:
    marker = f"MARK-{secrets.token_hex(4)}"
    return marker, f"import sys\nprint({marker!r}, flush=True)\n{body}"


def attack(box, body: str, limits: Limits | None = None):
    marker, program = marked(body)
    result = box.exec(program, limits=limits)
    assert result.stdout.startswith(marker), f"the attack did not run: {result}"
    return result


# ============================================================================ interface


def test_traits_cover_every_registered_backend():
    from ouroboros.sandbox import sandbox_names

    assert sorted(TRAITS) == sandbox_names() == sorted(BACKENDS)


def test_marker_exit_codes_and_traceback(sandbox):
    ok = sandbox.exec("print('MARKER-42')")
    assert (ok.exit_code, ok.stdout, ok.timed_out, ok.oom, ok.truncated) == (0, "MARKER-42\n", False, False, False)
    assert 0 < ok.duration_s < 5
    assert sandbox.exec("import sys; sys.exit(7)").exit_code == 7
    failed = sandbox.exec("raise ValueError('boom')")
    assert failed.exit_code == 1 and "ValueError: boom" in failed.stderr
    assert bool(failed.image) == TRAITS[sandbox.name].image


def test_command_form_runs_an_argv_without_a_shell(sandbox):
    result = sandbox.exec(command=["python3", "-c", "import sys; print(sys.argv[1:])", "a b", "$(id)"])
    assert result.stdout == "['a b', '$(id)']\n", result
    with pytest.raises(ValueError):
        sandbox.exec("pass", command=["true"])
    with pytest.raises(ValueError):
        sandbox.exec(command=[])


def test_files_persist_within_an_experiment_and_reset_clears_them(sandbox):
    sandbox.write_file("data/input.txt", "forty-two\n")
    result = sandbox.exec("import helper; print(helper.VALUE, open('data/input.txt').read().strip())\n"
                          "open('out.bin', 'wb').write(bytes(range(256)))",
                          files={"helper.py": "VALUE = 42\n"})
    assert result.stdout == "42 forty-two\n", result
    assert sandbox.read_file("out.bin") == bytes(range(256))
    assert sandbox.exec("print(open('out.bin', 'rb').read()[:3])").stdout == "b'\\x00\\x01\\x02'\n"
    sandbox.reset()
    assert "FileNotFoundError" in sandbox.exec("open('out.bin')").stderr
    with pytest.raises(FileNotFoundError):
        sandbox.read_file("out.bin")


@pytest.mark.parametrize("name", ["../escape.py", "/etc/passwd", "a/../../b", "", "x\0y"])
def test_bad_file_names_are_rejected(sandbox, name):
    with pytest.raises(ValueError):
        sandbox.exec("pass", files={name: "x"})
    with pytest.raises(ValueError):
        sandbox.write_file(name, "x")


def test_planted_symlinks_cannot_make_the_harness_touch_host_files(sandbox, tmp_path):
    target = tmp_path / "host-file.txt"
    target.write_text("host secret")
    os.chmod(tmp_path, 0o755)
    result = sandbox.exec(
        "import os\n"
        f"os.symlink({str(target)!r}, 'link.txt')\n"
        "os.symlink('/etc', 'etcdir')\n"
        f"os.symlink({str(tmp_path)!r}, 'hostdir')\n"
    )
    assert result.exit_code == 0, result
    with pytest.raises(ValueError):
        sandbox.read_file("link.txt")
    with pytest.raises(ValueError):
        sandbox.read_file("etcdir/hostname")
    with pytest.raises(ValueError):
        sandbox.write_file("hostdir/host-file.txt", "overwritten")
    sandbox.write_file("link.txt", "replaced")  # replaces the link itself
    assert target.read_text() == "host secret"
    assert sandbox.read_file("link.txt") == b"replaced"


def test_only_allowlisted_environment_reaches_the_program(sandbox, monkeypatch):
    canary = f"canary-{secrets.token_hex(8)}"
    monkeypatch.setenv("OUROBOROS_CANARY_KEY", canary)
    monkeypatch.setenv("ANTHROPIC_API_KEY", canary)
    result = sandbox.exec("import os; print(sorted(os.environ))")
    assert canary not in result.stdout
    names = set(eval(result.stdout))
    assert "OUROBOROS_TAG" in names
    assert names <= {"PATH", "HOME", "LANG", "PYTHONDONTWRITEBYTECODE", "OUROBOROS_TAG", "TMPDIR",
                     "HOSTNAME", "PWD", "SHLVL", "_"}, names


def test_infinite_loop_is_timed_out(sandbox):
    result = sandbox.exec("print('looping', flush=True)\nwhile True: pass", limits=FAST)
    assert result.timed_out and not result.oom and result.exit_code == 137, result
    assert 1.9 < result.duration_s < 4
    assert_survived(sandbox)


def test_memory_bomb_is_oom_not_timeout(sandbox):
    result = sandbox.exec("chunks = []\nwhile True:\n    chunks.append(b'x' * 10_000_000)\n")
    assert result.oom and not result.timed_out and result.exit_code != 0, result
    assert_survived(sandbox)


def test_output_flood_is_capped_and_marked(sandbox):
    result = sandbox.exec("import sys\nsys.stdout.write('x' * 3_000_000)\nsys.stderr.write('e' * 300_000)\n"
                          "print('done', file=sys.stderr)", limits=LIMITS.override(timeout_s=30))
    assert result.truncated and result.exit_code == 0, result
    assert len(result.stdout) == LIMITS.output_bytes and len(result.stderr) == LIMITS.output_bytes


def test_binary_garbage_is_decoded(sandbox):
    result = sandbox.exec("import os, sys\nsys.stdout.buffer.write(os.urandom(50_000) + b'\\xff\\xfe\\x00END')")
    assert result.exit_code == 0 and result.stdout.endswith("\x00END")


def test_per_call_limit_override(sandbox):
    assert sandbox.exec("import time; time.sleep(1.5); print('slept')",
                        limits=LIMITS.override(timeout_s=0.5)).timed_out
    assert sandbox.exec("import time; time.sleep(0.2); print('slept')").stdout == "slept\n"
    with pytest.raises(ValueError):
        LIMITS.override(walltime=3)


# ============================================================================ attacks (isolated only)


def test_fork_bomb(isolated):
    result = attack(isolated, "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                    limits=FAST)
    assert result.timed_out and not result.oom, result
    assert_survived(isolated)


def test_thread_bomb_stops_at_the_pids_limit(isolated):
    result = attack(isolated,
                    "import threading, time\nn = 0\ntry:\n    while True:\n"
                    "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n        n += 1\n"
                    "except RuntimeError:\n    pass\nprint('threads', n, flush=True)\nimport os; os._exit(0)\n",
                    limits=FAST)
    assert not result.timed_out, result
    count = int(result.stdout.split("threads")[1].split()[0])
    assert count < LIMITS.pids, result.stdout
    assert_survived(isolated)


def test_signal_ignoring_setsid_daemon_is_killed(isolated):
    result = attack(isolated, """
import os, signal, time
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
    signal.signal(s, signal.SIG_IGN)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for fd in (0, 1, 2):
            os.close(fd)
        while True:
            time.sleep(0.1)
    os._exit(0)
print('parent-exits', flush=True)
""")
    assert result.exit_code == 0 and not result.timed_out and "parent-exits" in result.stdout, result
    assert_survived(isolated)


def test_disk_fill_stops_at_the_cap(isolated):
    result = attack(isolated, """
import os
total = 0
chunk = b'x' * (1 << 20)
try:
    for i in range(10_000):
        with open(f'fill-{i}', 'wb') as fh:
            for _ in range(8):
                fh.write(chunk)
                fh.flush()
                total += len(chunk)
except OSError as exc:
    print('stopped', exc.errno, flush=True)
print('total', total >> 20, flush=True)
""", limits=LIMITS.override(timeout_s=20))
    total_mb = int(result.stdout.split("total")[1].split()[0])
    traits = TRAITS[isolated.name]
    if os.geteuid() == 0 and traits.written_data_cap == "total-as-root":
        assert "stopped 28" in result.stdout, result  # ENOSPC: the workdir as a whole is full
        assert total_mb <= LIMITS.disk_mb
    else:  # declared: only the per-file cap applies
        pytest.skip(f"{isolated.name}: written data is capped per file only without root")
    assert_survived(isolated)


def _listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    accepted: list = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                accepted.append(conn)
                conn.close()
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, accepted, stop


def test_host_loopback_and_engine_socket_are_unreachable(isolated):
    server, accepted, stop = _listener()
    port = server.getsockname()[1]
    try:
        result = attack(isolated, f"""
import socket
for host in ('127.0.0.1', '172.17.0.1', '10.0.2.2'):
    try:
        socket.create_connection((host, {port}), timeout=1).close()
        print('CONNECTED', host)
    except OSError as exc:
        print('blocked', host, type(exc).__name__)
for path in ('/var/run/docker.sock', '/run/docker.sock', '/run/containerd/containerd.sock'):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        print('CONNECTED', path)
    except OSError as exc:
        print('blocked', path, type(exc).__name__)
print('ifaces', sorted(n for _, n in socket.if_nameindex()))
""")
        assert "CONNECTED" not in result.stdout, result.stdout
        assert "ifaces ['lo']" in result.stdout or "ifaces []" in result.stdout, result.stdout
        time.sleep(0.3)
        assert accepted == []
    finally:
        stop.set()
        server.close()
    assert_survived(isolated)


def test_host_canary_file_and_environment_stay_out(isolated, tmp_path, monkeypatch):
    secret = secrets.token_hex(12)
    canaries = [tmp_path / "canary.txt", f"/root/ouroboros-canary-{secrets.token_hex(4)}.txt",
                f"/tmp/ouroboros-canary-{secrets.token_hex(4)}.txt"]
    for path in canaries:
        with open(path, "w") as fh:
            fh.write(secret)
    monkeypatch.setenv("OUROBOROS_HOST_CANARY", secret)
    try:
        result = attack(isolated, f"""
import os, glob
for path in {[str(p) for p in canaries]!r} + ['/etc/shadow', '/proc/1/environ', '/proc/self/environ']:
    try:
        print(path, 'READ', open(path, errors='replace').read()[:200])
    except OSError as exc:
        print(path, 'denied', type(exc).__name__)
for pattern in ('/root/*', '/home/*', '/tmp/*', '{workdir.ROOT}/*'):
    print(pattern, glob.glob(pattern))
""")
        assert secret not in result.stdout, result.stdout
        for path in canaries:
            assert f"{path} READ" not in result.stdout
    finally:
        for path in canaries[1:]:
            os.unlink(path)
    assert_survived(isolated)


def test_writes_outside_the_workdir_do_not_reach_the_host(isolated):
    leak = f"ouroboros-leak-{secrets.token_hex(6)}"
    result = attack(isolated, f"""
for path in ['/{leak}', '/usr/{leak}', '/etc/{leak}', '/tmp/{leak}', '/var/tmp/{leak}', '/root/{leak}', '/proc/sys/kernel/hostname']:
    try:
        open(path, 'w').write('x')
        print(path, 'wrote')
    except OSError as exc:
        print(path, 'denied', type(exc).__name__)
""")
    assert "/tmp/" in result.stdout
    for host_path in (f"/{leak}", f"/usr/{leak}", f"/etc/{leak}", f"/tmp/{leak}", f"/var/tmp/{leak}", f"/root/{leak}"):
        assert not os.path.exists(host_path), host_path
    assert "/proc/sys/kernel/hostname wrote" not in result.stdout
    assert_survived(isolated)


def test_no_capabilities_no_root_no_mounts(isolated):
    result = attack(isolated, """
import ctypes, os
status = dict(line.split(':', 1) for line in open('/proc/self/status'))
print('caps', status['CapEff'].strip(), status['CapPrm'].strip(), status['CapBnd'].strip())
print('nnp', status.get('NoNewPrivs', '?').strip())
print('uid', os.getuid(), os.geteuid())
libc = ctypes.CDLL(None, use_errno=True)
rc = libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)
print('mount', rc, ctypes.get_errno())
try:
    os.setuid(0)
    print('setuid WORKED')
except OSError as exc:
    print('setuid denied', exc.errno)
try:
    os.chroot('/tmp')
    print('chroot WORKED')
except OSError as exc:
    print('chroot denied', exc.errno)
""")
    out = result.stdout
    assert "caps 0000000000000000 0000000000000000" in out, out
    assert "nnp 1" in out, out
    assert "uid 65534 65534" in out
    assert "mount -1" in out and "WORKED" not in out, out
    assert_survived(isolated)


def test_kill_everything_and_the_parent(isolated):
    sentinel = subprocess.Popen(["sleep", "60"])
    try:
        result = attack(isolated, """
import os, signal, time
print('ppid', os.getppid(), flush=True)
for target in (-1, os.getppid(), 1):
    try:
        os.kill(target, signal.SIGKILL)
        print('sent', target, flush=True)
    except OSError as exc:
        print('denied', target, exc.errno, flush=True)
time.sleep(0.2)
print('after', flush=True)
""")
        assert sentinel.poll() is None, "a host process was killed"
        assert not result.timed_out and result.exit_code in (0, 137), result
    finally:
        sentinel.kill()
        sentinel.wait()
    assert_survived(isolated)


def test_host_processes_are_invisible(isolated):
    token = secrets.token_hex(6)
    sentinel = subprocess.Popen(["sleep", f"60.{int(token[:4], 16)}"])
    try:
        result = attack(isolated, """
import os
cmds = []
for pid in os.listdir('/proc'):
    if pid.isdigit():
        try:
            cmds.append(open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\\0', b' ').decode(errors='replace'))
        except OSError:
            pass
print('count', len(cmds))
print('\\n'.join(cmds))
""")
        assert f"60.{int(token[:4], 16)}" not in result.stdout
        assert "pytest" not in result.stdout and "ray" not in result.stdout.lower().split("count")[0]
        assert int(result.stdout.split("count")[1].split()[0]) <= 6, result.stdout
    finally:
        sentinel.kill()
        sentinel.wait()
    assert_survived(isolated)


def test_reset_leaves_no_workdir_and_no_container(isolated):
    isolated.exec("open('x', 'w').write('x')")
    path = isolated.workdir().path
    assert os.path.isdir(path)
    isolated.reset()
    assert not os.path.exists(path)
    if isolated.name == "docker":
        assert our_containers() == []

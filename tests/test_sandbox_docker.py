"""docker-specific behaviour: labels, warm containers, builds, Dockerfile checks, reaper, janitor.

The behaviour every backend shares, and the attack suite, are in test_sandbox_conformance.py.

Everything here runs against the real engine and the local `ouroboros-sandbox:base` image
(cluster/build_sandbox_image.sh); nothing is pulled and builds run with `--network none`.
Every container and image a test makes carries `ouroboros.run=<RUN_ID>` (or is made by the
test itself and removed by it); the module fixture sweeps those and fails if any were left.
Network probes only ever target 127.0.0.1 listeners the test opens.

Where no engine answers or the image is missing these tests skip, unless
OUROBOROS_REQUIRE_SANDBOX=1 (CI), where they fail instead.
"""
from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

import ouroboros
from ouroboros.sandbox import dockerfile, reaper, workdir
from ouroboros.sandbox.base import BuildFailed, Limits, SandboxError, SandboxUnavailable

REQUIRE = os.environ.get("OUROBOROS_REQUIRE_SANDBOX") == "1"
BASE = "ouroboros-sandbox:base"
RUN_ID = f"test-docker-{secrets.token_hex(5)}"
FRESH_RUN_ID = f"{RUN_ID}-fresh"  # the `fresh` sandboxes, apart from the module's warm one
JANITOR_RUN_ID = f"{RUN_ID}-janitor"
LIMITS = Limits(timeout_s=10.0, memory_mb=256, pids=32, output_bytes=64 * 1024, disk_mb=16)
ALLOWED = {BASE, "sha256:" + "0" * 64}
# Every Dockerfile the engine gets here starts with HEAD: the LABEL marks the build's
# intermediate images too (the product's labels only reach the final image), so the sweep
# can find what a build left behind.
TEST_LABEL = "ouroboros.test"
HEAD = f"FROM ouroboros-sandbox:base\nLABEL {TEST_LABEL}={RUN_ID}\n"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(ouroboros.__file__)))


def _label(run_id: str = RUN_ID) -> dict:
    return {"label": f"{reaper.RUN_LABEL}={run_id}"}


def our_containers(client, run_id: str = RUN_ID, **filters) -> list:
    return client.containers.list(all=True, filters={**_label(run_id), **filters}, ignore_removed=True)


def our_images(client, run_id: str = RUN_ID) -> list:
    return client.images.list(filters=_label(run_id))


def _sweep(client) -> list[str]:
    """Remove what this module's run ids left; return a description of each leftover."""
    left = []
    for run_id in (RUN_ID, FRESH_RUN_ID, JANITOR_RUN_ID):
        for container in our_containers(client, run_id):
            left.append(f"container {container.short_id} ({run_id})")
            container.remove(force=True)
        for image in our_images(client, run_id):
            left.append(f"image {image.short_id} {image.tags} ({run_id})")
            client.images.remove(image.id, force=True)
    return left


def _sweep_intermediates(client) -> None:
    """Remove build leftovers (intermediate images, build containers) made by this module."""
    label = {"label": f"{TEST_LABEL}={RUN_ID}"}
    for container in client.containers.list(all=True, filters=label, ignore_removed=True):
        container.remove(force=True)
    for _ in range(3):
        images = client.images.list(all=True, filters=label)
        if not images:
            return
        for image in sorted(images, key=lambda i: i.attrs["Created"], reverse=True):
            try:
                client.images.remove(image.id, force=True)
            except Exception:
                pass


@pytest.fixture(scope="module")
def client():
    try:
        import docker

        engine = docker.from_env(timeout=60)
        engine.ping()
    except Exception as exc:
        if REQUIRE:
            pytest.fail(f"OUROBOROS_REQUIRE_SANDBOX=1 but no Docker engine answers: {exc}")
        pytest.skip(f"no Docker engine answers: {exc}")
    try:
        engine.images.get(BASE)
    except docker.errors.ImageNotFound:
        if REQUIRE:
            pytest.fail(f"OUROBOROS_REQUIRE_SANDBOX=1 but {BASE} is missing (cluster/build_sandbox_image.sh)")
        pytest.skip(f"{BASE} is missing: build it with cluster/build_sandbox_image.sh")
    yield engine
    left = _sweep(engine)
    _sweep_intermediates(engine)
    engine.close()
    assert left == [], f"the tests left these behind: {left}"


@pytest.fixture(scope="module")
def sandbox(client):
    from ouroboros.sandbox.docker import DockerSandbox

    box = DockerSandbox(limits=LIMITS, run_id=RUN_ID)
    yield box
    box.cleanup()


@pytest.fixture
def fresh(client):
    """A DockerSandbox of its own, for tests that switch environments or reset it."""
    from ouroboros.sandbox.docker import DockerSandbox

    box = DockerSandbox(limits=LIMITS, run_id=FRESH_RUN_ID)
    yield box
    box.cleanup()


@pytest.fixture
def built_images(client):
    """Image ids a test built; removed afterwards (a test's images never outlive it)."""
    ids: list[str] = []
    yield ids
    for image_id in ids:  # a sandbox may still run a container of it: that goes first
        for container in client.containers.list(all=True, filters={"ancestor": image_id}, ignore_removed=True):
            if container.labels.get(reaper.OWNER_LABEL) == reaper.owner_label():
                container.remove(force=True)
        try:
            client.images.remove(image_id, force=True)
        except Exception:
            pass


class Listener:
    """A TCP listener on 127.0.0.1 that records every connection it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[tuple] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.accepted.append(peer)
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


def run_ok(box, *command: str, **kwargs):
    result = box.exec(command=list(command), **kwargs)
    assert result.exit_code == 0 and not result.error, result
    return result


# ----------------------------------------------------------------------------- labels, containers


def test_container_carries_run_and_owner_labels(client, fresh):
    run_ok(fresh, "true")
    containers = our_containers(client, FRESH_RUN_ID)
    mine = [c for c in containers if c.labels.get(reaper.OWNER_LABEL) == reaper.owner_label()]
    assert len(mine) == 1, [c.labels for c in containers]
    labels = mine[0].labels
    assert labels[reaper.RUN_LABEL] == FRESH_RUN_ID
    assert labels[reaper.OWNER_LABEL] == f"{socket.gethostname()}/{os.getpid()}-{reaper._start_time(os.getpid())}"
    assert mine[0].status == "running"
    fresh.reset()
    assert our_containers(client, FRESH_RUN_ID) == []
    run_ok(fresh, "true")
    assert len(our_containers(client, FRESH_RUN_ID)) == 1
    fresh.cleanup()
    assert our_containers(client, FRESH_RUN_ID) == []
    fresh.cleanup()  # safe twice


def test_warm_container_is_reused_and_reset_starts_fresh(client, fresh):
    fresh.write_file("keep.txt", "kept")
    run_ok(fresh, "true")
    (first,) = our_containers(client, FRESH_RUN_ID)
    result = run_ok(fresh, "cat", "keep.txt")
    assert result.stdout == "kept"
    assert [c.id for c in our_containers(client, FRESH_RUN_ID)] == [first.id]

    # A memory change needs a new container; the workdir goes along.
    bigger = LIMITS.override(memory_mb=LIMITS.memory_mb + 64)
    result = run_ok(fresh, "cat", "keep.txt", limits=bigger)
    assert result.stdout == "kept"
    (second,) = our_containers(client, FRESH_RUN_ID)
    assert second.id != first.id
    assert second.attrs["HostConfig"]["Memory"] == bigger.memory_mb << 20
    # A timeout change alone keeps the warm container.
    run_ok(fresh, "true", limits=bigger.override(timeout_s=7.0))
    assert [c.id for c in our_containers(client, FRESH_RUN_ID)] == [second.id]

    fresh.reset()
    assert our_containers(client, FRESH_RUN_ID) == []
    result = run_ok(fresh, "ls", "-A", "/work")
    assert result.stdout == "", "reset() must give an empty workdir"
    (third,) = our_containers(client, FRESH_RUN_ID)
    assert third.id not in (first.id, second.id)


def test_container_hardening(client, sandbox):
    run_ok(sandbox, "true")
    (container,) = our_containers(client)
    host = container.attrs["HostConfig"]
    assert host["CapDrop"] == ["ALL"] or "ALL" in host["CapDrop"]
    assert host["ReadonlyRootfs"] is True
    assert host["NetworkMode"] == "none"
    # No network, and none of the engine's network code either: no libnetwork sandbox or
    # endpoint is made for the container (docker.io 20.10 deadlocked in that code under churn).
    assert container.attrs["Config"].get("NetworkDisabled") is True
    assert not container.attrs["NetworkSettings"]["SandboxKey"]
    assert not container.attrs["NetworkSettings"]["Networks"]
    # Its own namespace still has loopback, as with `--network none` and in bwrap.
    loop = run_ok(sandbox, "python3", "-c", "import socket\ns = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
                  "socket.create_connection(s.getsockname(), timeout=2).close(); print('loopback ok')")
    assert loop.stdout.strip() == "loopback ok"
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Privileged"] is False
    assert host["Memory"] == host["MemorySwap"] == LIMITS.memory_mb << 20
    assert not any("docker.sock" in (m.get("Source") or "") for m in container.attrs["Mounts"])


def test_exec_identity_and_host_isolation(client, sandbox):
    program = (
        "import os, json\n"
        "def caps(path):\n"
        "    for line in open(path):\n"
        "        if line.startswith('CapEff:'):\n"
        "            return int(line.split()[1], 16)\n"
        "print(json.dumps({\n"
        "    'ids': [os.getuid(), os.geteuid(), os.getgid(), os.getegid()],\n"
        "    'sock': [os.path.exists(p) for p in ('/var/run/docker.sock', '/run/docker.sock')],\n"
        "    'pid1_cap': caps('/proc/1/status'), 'self_cap': caps('/proc/self/status'),\n"
        "    'env': sorted(os.environ), 'cwd': os.getcwd(),\n"
        "}))\n"
    )
    result = sandbox.exec(program)
    assert result.exit_code == 0, result
    facts = json.loads(result.stdout)
    assert facts["ids"] == [65534] * 4
    assert facts["sock"] == [False, False]
    assert facts["pid1_cap"] == 0 and facts["self_cap"] == 0
    assert facts["cwd"] == "/work"
    assert "DOCKER_HOST" not in facts["env"] and set(facts["env"]) <= {
        "PATH", "HOME", "LANG", "PYTHONDONTWRITEBYTECODE", "HOSTNAME"}
    assert result.image == client.images.get(BASE).id == sandbox.environment


@pytest.mark.gpu
def test_gpu_is_visible_inside(client):
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no GPU on this host (nvidia-smi is missing)")
    from ouroboros.sandbox.docker import DockerSandbox

    box = DockerSandbox(limits=LIMITS, run_id=RUN_ID, gpus=1)
    try:
        try:
            result = box.exec(command=["nvidia-smi", "-L"])
        except SandboxError as exc:
            assert "gpu" in str(exc).lower() or "device" in str(exc).lower(), exc
            pytest.fail(f"this host has a GPU but the docker sandbox could not use it: {exc}")
        assert result.exit_code == 0 and "GPU" in result.stdout, result
    finally:
        box.cleanup()


def test_missing_engine_names_the_install_command(monkeypatch):
    from ouroboros.sandbox.docker import DockerSandbox

    monkeypatch.setenv("DOCKER_HOST", f"unix:///nonexistent-{secrets.token_hex(4)}.sock")
    with pytest.raises(SandboxUnavailable) as info:
        DockerSandbox(run_id=RUN_ID)
    assert "apt-get install -y docker.io" in str(info.value)


def test_missing_image_names_the_build_script(client):
    from ouroboros.sandbox.docker import DockerSandbox

    with pytest.raises(SandboxUnavailable) as info:
        DockerSandbox(image="ouroboros-sandbox:nope", run_id=RUN_ID)
    assert "cluster/build_sandbox_image.sh" in str(info.value) and "ouroboros-sandbox:nope" in str(info.value)


def test_bad_run_id_is_refused(client):
    from ouroboros.sandbox.docker import DockerSandbox

    with pytest.raises(ValueError):
        DockerSandbox(run_id="a b;rm -rf /")


# ----------------------------------------------------------------------------- builds


def test_build_and_use_environment(client, fresh, built_images):
    fresh.write_file("notes/before.txt", "written before the switch")
    run_ok(fresh, "true")
    text = HEAD + "RUN echo hi > /opt/marker\nCOPY data.txt /opt/data.txt\n"
    image_id = fresh.build(text, files={"data.txt": "payload-123"})
    built_images.append(image_id)
    assert image_id.startswith("sha256:")
    image = client.images.get(image_id)
    assert image.labels[reaper.RUN_LABEL] == FRESH_RUN_ID
    assert image.labels[reaper.OWNER_LABEL] == reaper.owner_label()
    assert image.tags and all(tag.startswith(f"ouroboros-env:{FRESH_RUN_ID}-") for tag in image.tags)

    fresh.use_environment(image_id)
    result = run_ok(fresh, "cat", "/opt/marker", "/opt/data.txt", "notes/before.txt")
    assert result.stdout == "hi\npayload-123written before the switch"
    assert result.image == image_id
    (container,) = our_containers(client, FRESH_RUN_ID)
    assert container.image.id == image_id

    # Building the same context again gives the same image (the tag is the context digest).
    assert fresh.build(text, files={"data.txt": "payload-123"}) == image_id
    # An environment built on an environment of ours is allowed.
    child = fresh.build(f"FROM {image.tags[0]}\nLABEL {TEST_LABEL}={RUN_ID}\nRUN cat /opt/marker > /opt/child\n")
    built_images.insert(0, child)
    fresh.use_environment(child)
    assert run_ok(fresh, "cat", "/opt/child", "notes/before.txt").stdout == "hi\nwritten before the switch"


def test_failed_run_step_reports_the_log(client, sandbox):
    token = secrets.token_hex(4)
    text = HEAD + f"RUN python3 -c \"raise SystemExit('boom-marker-{token}')\"\n"
    with pytest.raises(BuildFailed) as info:
        sandbox.build(text)
    assert f"boom-marker-{token}" in info.value.log
    assert "non-zero code" in str(info.value) or "returned" in str(info.value), info.value
    assert not [c for c in client.containers.list(all=True, ignore_removed=True) if token in " ".join(c.attrs["Config"]["Cmd"] or [])]
    assert run_ok(sandbox, "echo", "still-works").stdout == "still-works\n"


def test_exit_code_of_run_step(sandbox):
    with pytest.raises(BuildFailed) as info:
        sandbox.build(HEAD + "RUN echo before-exit && exit 3\n")
    assert "before-exit" in info.value.log
    assert "3" in str(info.value)


def test_failed_build_leaves_no_images(client, sandbox):
    token = secrets.token_hex(4)
    text = HEAD + f"LABEL {TEST_LABEL}.token={token}\nRUN echo {token} > /opt/a\nRUN exit 3\n"
    selector = {"label": f"{TEST_LABEL}.token={token}"}
    try:
        with pytest.raises(BuildFailed):
            sandbox.build(text)
        left = client.images.list(all=True, filters=selector)
        assert left == [], "a failed build left intermediate images, which carry no ouroboros label"
    finally:
        for container in client.containers.list(all=True, filters=selector, ignore_removed=True):
            container.remove(force=True)
        for image in sorted(client.images.list(all=True, filters=selector), key=lambda i: i.attrs["Created"],
                            reverse=True):
            try:  # removing a child also removes its untagged parents
                client.images.remove(image.id, force=True)
            except Exception as exc:
                if "No such image" not in str(exc):
                    raise


def _refusal(sandbox, text: str, files: dict | None = None) -> BuildFailed:
    with pytest.raises(BuildFailed) as info:
        sandbox.build(text, files=files)
    assert str(info.value).startswith("the Dockerfile was refused"), info.value
    return info.value


def test_refuses_unavailable_base_image(sandbox):
    error = _refusal(sandbox, "FROM ubuntu:22.04\nRUN true\n")
    assert "'ubuntu:22.04' is not available" in str(error) and BASE in str(error)


def test_refuses_missing_from(sandbox):
    error = _refusal(sandbox, "RUN echo no-from\n")
    assert "no FROM line" in str(error) and error.log


def test_refuses_run_network_flag(sandbox):
    error = _refusal(sandbox, "FROM ouroboros-sandbox:base\nRUN --network=host echo hi\n")
    assert "--network" in str(error) and "line 2" in str(error)


@pytest.mark.parametrize("add", [
    "ADD http://127.0.0.1:{port}/x /x",
    "ADD --chown=1:1 http://127.0.0.1:{port}/x /x",
    'ADD ["http://127.0.0.1:{port}/x", "/x"]',
    "add HTTP://127.0.0.1:{port}/x /x",
    "ADD http://127.0.0.1:{port}/repo.git /y",
    "ONBUILD ADD http://127.0.0.1:{port}/x /x",
    # The forms below reach the same URL after the engine's own parsing.
    'ADD ["http://127.0.0.1:{port}/x","/x"]',
    "ADD http:\\\n//127.0.0.1:{port}/x /x",
    "ARG U=http://127.0.0.1:{port}/x\nADD $U /x",
    "ENV U=http://127.0.0.1:{port}/x\nADD ${{U}} /x",
    'ADD h"ttp://127.0.0.1:{port}/x" /x',
    "ADD http\\://127.0.0.1:{port}/x /x",
    # Whitespace and encodings where Python and Docker disagree (found in review).
    "ADD\thttp://127.0.0.1:{port}/tab /x",
    "ADD\x0bhttp://127.0.0.1:{port}/vtab /x",
    "RUN echo hi \\\u00a0\nADD http://127.0.0.1:{port}/nbsp /x",
    "VOLUME /data",
])
def test_refuses_add_of_urls(sandbox, listener, add):
    text = HEAD + add.format(port=listener.port) + "\n"
    try:
        error = _refusal(sandbox, text)
        assert "fetched from the network" in str(error) or "not allowed" in str(error), error
    finally:
        time.sleep(0.05)
        assert listener.accepted == [], f"the engine fetched from the test's listener for {add!r}"


def test_context_file_cannot_replace_the_checked_dockerfile(client, sandbox, listener, built_images):
    evil = f"FROM ouroboros-sandbox:base\nADD http://127.0.0.1:{listener.port}/x /x\n"
    try:
        image_id = sandbox.build(HEAD + "RUN echo checked > /opt/checked\n", files={"Dockerfile": evil})
    except BuildFailed as exc:  # refusing the file name is as good as ignoring it
        assert "Dockerfile" in str(exc), exc
    else:
        built_images.append(image_id)
        sandbox.use_environment(image_id)
        try:
            assert run_ok(sandbox, "cat", "/opt/checked").stdout == "checked\n"
        finally:
            sandbox.use_environment(BASE)
    time.sleep(0.05)
    assert listener.accepted == [], "a context file named Dockerfile replaced the checked Dockerfile"


# ----------------------------------------------------------------------------- dockerfile.check


def test_logical_lines_join_continuations_and_drop_comments():
    text = (
        "# a comment\n"
        "\n"
        "FROM ouroboros-sandbox:base\n"
        "RUN echo a \\\n"
        "# a comment inside the instruction\n"
        "    && echo b\n"
        "  COPY a.txt /a.txt\n"
    )
    lines = dockerfile.logical_lines(text)
    assert [n for n, _ in lines] == [3, 4, 7]
    assert lines[0][1] == "FROM ouroboros-sandbox:base"
    assert lines[1][1].startswith("RUN echo a") and lines[1][1].endswith("&& echo b")
    assert "comment" not in lines[1][1]
    assert lines[2][1] == "COPY a.txt /a.txt"


def test_logical_lines_escape_directive():
    text = "# escape=`\nFROM ouroboros-sandbox:base\nRUN echo a `\n    b\\\nADD http://127.0.0.1:1/x /x\n"
    lines = dockerfile.logical_lines(text)
    assert [n for n, _ in lines] == [2, 3, 5]
    assert lines[1][1].startswith("RUN echo a") and lines[1][1].endswith("b\\")
    problems = dockerfile.check(text, ALLOWED)
    assert len(problems) == 1 and "line 5" in problems[0] and "fetched from the network" in problems[0]
    # Without the directive the backtick is no escape and the backslash joins RUN and ADD.
    plain = dockerfile.logical_lines(text.replace("# escape=`\n", ""))
    assert [n for n, _ in plain] == [1, 2, 3]


def test_check_multi_stage_and_copy_from():
    ok = (
        "FROM ouroboros-sandbox:base AS b\n"
        "RUN echo built > /opt/x\n"
        "FROM b AS c\n"
        "FROM ouroboros-sandbox:base\n"
        "COPY --from=b /opt/x /opt/x\n"
        "COPY --from=C /opt/x /opt/y\n"
        "COPY --from=0 /opt/x /opt/z\n"
        "COPY --from=ouroboros-sandbox:base /etc/hostname /opt/h\n"
    )
    assert dockerfile.check(ok, ALLOWED) == []
    bad = "FROM ouroboros-sandbox:base\nCOPY --from=alpine:3 /bin/sh /sh\n"
    (problem,) = dockerfile.check(bad, ALLOWED)
    assert "line 2" in problem and "'alpine:3'" in problem


def test_check_refusals():
    base = "FROM ouroboros-sandbox:base\n"
    cases = {
        base + "ONBUILD ADD http://example.invalid/x /x\n": "ONBUILD' is not allowed",
        base + "ADD https://github.com/x/y.git /y\n": "fetched from the network",
        base + "ADD git@github.com:x/y.git /y\n": "fetched from the network",
        base + "ADD local.tar /y\n": None,
        base + "COPY ./a ./b /dst/\n": None,
        base + "RUN --mount=type=bind,source=/,target=/host cat /host/etc/shadow\n": "not allowed",
        base + "RUN --security=insecure true\n": "not allowed",
        "FROM --platform=linux/amd64 ubuntu:22.04\n": "not available",
        "FROM scratch\nCOPY a /a\n": None,
        "FROM\n": "names no image",
        "# just a comment\n": "no FROM line",
        base + "#" + "x" * (70 * 1024) + "\n": "bytes",
    }
    for text, expected in cases.items():
        problems = dockerfile.check(text, ALLOWED)
        if expected is None:
            assert problems == [], (text, problems)
        else:
            assert problems and expected in " ".join(problems), (text[:80], problems)


def test_check_stage_named_like_the_image_it_pulls():
    # `FROM alpine AS alpine` names a registry image (a stage only counts once defined).
    problems = dockerfile.check("FROM alpine AS alpine\nRUN true\n", ALLOWED)
    assert problems and "'alpine' is not available" in problems[0], problems


# ----------------------------------------------------------------------------- build isolation


PROBE = """\
import json, socket
out = {}
for name, host in (("loopback", "127.0.0.1"), ("gateway", "172.17.0.1")):
    try:
        socket.create_connection((host, PORT), 2).close()
        out[name] = "CONNECTED"
    except OSError as exc:
        out[name] = "FAILED %s" % exc.errno
out["interfaces"] = sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:])
open("/opt/probe.json", "w").write(json.dumps(out))
print("PROBE", json.dumps(out))
"""


def test_build_has_no_network(sandbox, listener, built_images):
    text = HEAD + "COPY probe.py /opt/probe.py\nRUN python3 /opt/probe.py || true\n"
    image_id = sandbox.build(text, files={"probe.py": PROBE.replace("PORT", str(listener.port))})
    built_images.append(image_id)
    sandbox.use_environment(image_id)
    try:
        probe = json.loads(run_ok(sandbox, "cat", "/opt/probe.json").stdout)
    finally:
        sandbox.use_environment(BASE)
    assert probe["loopback"].startswith("FAILED"), probe
    assert probe["gateway"].startswith("FAILED"), probe
    assert probe["interfaces"] == ["lo"], probe
    time.sleep(0.05)
    assert listener.accepted == []


def test_dockerfile_text_never_reaches_a_shell(client, sandbox, built_images):
    token = secrets.token_hex(6)
    pwned = f"/tmp/pwned-{token}"
    text = (
        HEAD +
        f'LABEL x="$(touch {pwned})" y="`touch {pwned}`"\n'
        f"LABEL {reaper.RUN_LABEL}=someone-else {reaper.OWNER_LABEL}=otherhost/1-1\n"
        f"# comment ; touch {pwned}\n"
        f"RUN echo safe # ; touch {pwned}\n"
        f'ENV E="; touch {pwned} && echo"\n'
        f"RUN echo '$(touch {pwned})' > /opt/quoted\n"
    )
    files = {f"a;touch {pwned.replace('/', '_')}": "x", "$(id)": "y"}
    image_id = sandbox.build(text, files=files)
    built_images.append(image_id)
    assert not os.path.exists(pwned)
    image = client.images.get(image_id)
    assert image.tags and all(tag.startswith(f"ouroboros-env:{RUN_ID}-") for tag in image.tags), image.tags
    assert image.labels[reaper.RUN_LABEL] == RUN_ID
    assert image.labels[reaper.OWNER_LABEL] == reaper.owner_label()


def test_build_time_limit_cancels_the_build(client, sandbox):
    token = secrets.token_hex(4)
    seconds = 60 + int(token, 16) % 50  # a command line only this build runs
    text = HEAD + f"RUN sleep {seconds}\n"
    start = time.monotonic()
    try:
        with pytest.raises(BuildFailed) as info:
            sandbox.build(text, limits=Limits(timeout_s=3))
        elapsed = time.monotonic() - start
        assert "within 3 s" in str(info.value), info.value
        assert elapsed < 15, elapsed

        def sleepers():
            return [c for c in client.containers.list(ignore_removed=True)
                    if f"sleep {seconds}" in " ".join(c.attrs["Config"]["Cmd"] or [])]

        deadline = time.monotonic() + 3
        while sleepers() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sleepers() == [], "the cancelled build's RUN container is still running"
    finally:  # never leave the build running, whatever the product did
        for container in client.containers.list(all=True, ignore_removed=True):
            if f"sleep {seconds}" in " ".join(container.attrs["Config"]["Cmd"] or []):
                container.remove(force=True)
    assert run_ok(sandbox, "echo", "ok").stdout == "ok\n"


def test_use_environment_refuses_foreign_images(client, sandbox):
    container = client.containers.run(BASE, ["true"], detach=True, network_mode="none")
    try:
        container.wait(timeout=30)
        image = container.commit(repository="ouroboros-test-foreign", tag=RUN_ID)
    finally:
        container.remove(force=True)
    try:
        with pytest.raises(SandboxError) as info:
            sandbox.use_environment(image.id)
        assert "not built by Ouroboros" in str(info.value)
        with pytest.raises(SandboxError):
            sandbox.use_environment("sha256:" + "f" * 64)
        assert sandbox.environment == client.images.get(BASE).id
    finally:
        client.images.remove(image.id, force=True)


# ----------------------------------------------------------------------------- reaper and janitor


def test_reap_docker_removes_only_dead_owners_on_this_host(client):
    here = reaper.host()
    owners = {
        "dead": {reaper.RUN_LABEL: RUN_ID, reaper.OWNER_LABEL: f"{here}/999999-1"},
        "live": {reaper.RUN_LABEL: RUN_ID, reaper.OWNER_LABEL: reaper.owner_label()},
        "other-host": {reaper.RUN_LABEL: RUN_ID, reaper.OWNER_LABEL: f"not-{here}/999999-1"},
        "no-run-label": {reaper.OWNER_LABEL: f"{here}/999999-1", TEST_LABEL: RUN_ID},
        "unlabelled": {TEST_LABEL: RUN_ID},
    }
    made = {}
    image = None
    try:
        for name, labels in owners.items():
            made[name] = client.containers.run(BASE, ["sleep", "infinity"], detach=True, init=True,
                                               network_mode="none", labels=labels)
        image = made["unlabelled"].commit(
            repository="ouroboros-test-reap", tag=RUN_ID,
            changes=[f"LABEL {reaper.RUN_LABEL}={RUN_ID} {reaper.OWNER_LABEL}={here}/999999-1"])
        reaper.reap_docker(client)
        alive = {c.id for c in client.containers.list(all=True, filters={"label": TEST_LABEL}, ignore_removed=True)}
        alive |= {c.id for c in our_containers(client)}
        assert made["dead"].id not in alive
        assert {made[n].id for n in owners if n != "dead"} <= alive
        assert image.id not in {i.id for i in client.images.list(filters={"label": reaper.OWNER_LABEL})}
    finally:
        for container in made.values():
            try:
                container.remove(force=True)
            except Exception:
                pass
        if image is not None:
            try:
                client.images.remove(image.id, force=True)
            except Exception:
                pass


JANITOR_CHILD = """\
import json, sys, threading, time
from ouroboros.sandbox import reaper
from ouroboros.sandbox.base import Limits
from ouroboros.sandbox.docker import DockerSandbox

box = DockerSandbox(limits=Limits(timeout_s=300, memory_mb=128, pids=16, disk_mb=8), run_id=sys.argv[1])
box.write_file("left.txt", "x")
threading.Thread(target=box.exec, kwargs={"command": ["sleep", "297"]}, daemon=True).start()
label = {"label": reaper.RUN_LABEL + "=" + sys.argv[1]}
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    found = box.client.containers.list(filters=label, ignore_removed=True)
    if found and any("297" in " ".join(p) for p in found[0].top()["Processes"]):
        break
    time.sleep(0.1)
print(json.dumps({"owner": reaper.owner_token(), "workdir": box.workdir().path}))
print("READY", flush=True)
time.sleep(3600)
"""


def _read_until_ready(proc, timeout_s: float) -> list[str]:
    lines, buffer = [], b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        buffer += chunk
        lines = buffer.decode().splitlines()
        if "READY" in lines:
            return lines
    raise AssertionError(f"the child never got ready: {buffer.decode()!r}; stderr: {proc.stderr.read().decode()!r}"
                         if proc.poll() is not None else f"the child never got ready: {buffer.decode()!r}")


def test_janitor_cleans_up_after_sigkill(client):
    env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", JANITOR_CHILD, JANITOR_RUN_ID], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = _read_until_ready(proc, 60)
        info = json.loads(lines[lines.index("READY") - 1])
        (container,) = our_containers(client, JANITOR_RUN_ID)
        assert container.status == "running"
        assert container.labels[reaper.OWNER_LABEL] == f"{reaper.host()}/{info['owner']}"
        assert any("sleep 297" in " ".join(p) for p in container.top()["Processes"])
        assert os.path.exists(os.path.join(info["workdir"], "left.txt"))
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
    deadline = time.monotonic() + 30  # a busy engine takes a while to remove a container
    while time.monotonic() < deadline and (our_containers(client, JANITOR_RUN_ID)
                                          or os.path.exists(workdir.owner_dir(info["owner"]))):
        time.sleep(0.1)
    assert our_containers(client, JANITOR_RUN_ID) == [], "the janitor left the dead owner's container"
    assert not os.path.exists(info["workdir"])
    assert not os.path.exists(workdir.owner_dir(info["owner"]))


def test_check_refuses_a_byte_order_mark_and_odd_whitespace():
    allowed = {"ouroboros-sandbox:base"}
    for text in ["\ufeff# escape=`\nFROM ouroboros-sandbox:base\n", "FROM ouroboros-sandbox:base\r\nRUN x\r\n",
                 "FROM ouroboros-sandbox:base\nRUN a \\\f\nADD http://x/y /z\n"]:
        problems = dockerfile.check(text, allowed)
        assert problems and "not allowed" in problems[0], (text, problems)


def test_an_images_entrypoint_and_logs_do_not_run(fresh, built_images):
    image = fresh.build(HEAD + 'ENTRYPOINT ["sh", "-c", "echo entrypoint-ran; exec sleep 1000"]\n')
    built_images.append(image)
    fresh.use_environment(image)
    result = fresh.exec("import os\nfor p in os.listdir('/proc'):\n    if p.isdigit():\n"
                        "        print(open(f'/proc/{p}/cmdline','rb').read().replace(b'\\0', b' '))")
    assert result.exit_code == 0 and "sleep 1000" not in result.stdout, result.stdout
    fresh._container.reload()
    assert fresh._container.attrs["HostConfig"]["LogConfig"]["Type"] == "none"


def test_built_environments_are_held_to_keep_images(client, built_images):
    """A run that builds an environment every cycle keeps only the newest `keep_images` of
    them, and never one that a container still runs."""
    from ouroboros.sandbox.docker import DockerSandbox

    builder = DockerSandbox(limits=LIMITS, run_id=FRESH_RUN_ID, keep_images=2)
    user = DockerSandbox(limits=LIMITS, run_id=FRESH_RUN_ID)
    try:
        first = builder.build(HEAD + "RUN echo 0 > /opt/k\n")
        built_images.append(first)
        user.use_environment(first)
        assert run_ok(user, "cat", "/opt/k").stdout == "0\n"  # a container of it runs from here on
        ids = [first]
        for k in range(1, 5):
            ids.append(builder.build(HEAD + f"RUN echo {k} > /opt/k\n"))
            built_images.append(ids[-1])
        left = {i.id for i in our_images(client, FRESH_RUN_ID)}
        # The two newest, and the one a container uses; the others are gone.
        assert left == {ids[4], ids[3], first}
        assert run_ok(user, "cat", "/opt/k").stdout == "0\n"
        builder.use_environment(ids[4])
        assert run_ok(builder, "cat", "/opt/k").stdout == "4\n"
    finally:
        user.cleanup()
        builder.cleanup()


def test_an_environment_pruned_before_its_first_use_is_built_again(client, built_images):
    """Another session's build may prune (keep_images) the environment this one just built,
    before a container of it starts: the session builds it again from its Dockerfile."""
    from ouroboros.sandbox.docker import DockerSandbox

    box = DockerSandbox(limits=LIMITS, run_id=FRESH_RUN_ID, keep_images=1)
    other = DockerSandbox(limits=LIMITS, run_id=FRESH_RUN_ID, keep_images=1)
    try:
        mine = box.build(HEAD + "RUN echo mine > /opt/k\n")
        built_images.append(mine)
        built_images.append(other.build(HEAD + "RUN echo other > /opt/k\n"))  # prunes `mine`
        assert mine not in {i.id for i in our_images(client, FRESH_RUN_ID)}
        box.use_environment(mine)
        built_images.append(box.environment)
        assert run_ok(box, "cat", "/opt/k").stdout == "mine\n"
    finally:
        box.cleanup()
        other.cleanup()

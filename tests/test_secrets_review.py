"""Review of secret redaction (review-exp): paths by which a `sandbox.env_from` credential reaches
what a run writes, past ouroboros/secrets.py, that tests/test_secrets.py does not cover.

Three kinds:

1. Encodings that ordinary tools print and a user would expect caught: base64 and hex *wrapped
   into lines* (the `base64` and `xxd -p` commands, `base64.encodebytes`, PEM and MIME all wrap
   at 76 or 60 characters, so any credential longer than 57 bytes comes out in pieces, and
   `env | base64` splits even a 40-character token in most layouts);
   base85 and ascii85 (the stdlib's other base64-module encodings); `urllib.parse.quote` with its
   default safe='/' (a base64-alphabet credential with '+' and '/', as AWS secret keys are);
   `pprint` of the credential's characters (one per line: 5 separator characters, one more than
   the redactor allows). Deliberate obfuscation (compression, arithmetic on the bytes, a
   substring, a split) is out of scope here: see the report.
2. The tasks environment's relay: the runner redacts the exec's stdout, which is the harness's
   JSON lines, and the host then *decodes* those lines. JSON escaping turns forms the redactor
   catches ("\\n".join(secret): characters on their own lines) into forms it does not ("\\\\n"
   is a backslash and an n, and n is a word character), and the host stores the decoded text
   unredacted. The harness also cuts the candidate's stdout at its own stream cap inside the
   sandbox, where the runner's cut-edge rule (a stream that ends in the head of a secret) never
   sees the cut.
3. Build logs: SandboxRunner.build hands a BuildFailed's message and log through unredacted,
   though secrets.py and sandbox_runner.py both say build logs leave the runner redacted; the
   cycle puts the log into the step's result (DB, FTS, results.json in git, the next prompt).

Every sandboxed program here runs in bwrap through SandboxRunner.
"""
from __future__ import annotations

import base64
import json
import pprint
import textwrap
import urllib.parse

import pytest

from conftest import require_bwrap
from ouroboros.secrets import Redactor

# A credential of a common length and alphabet (an OpenAI project key is ~164 characters).
LONG = "sk-proj-" + "Qm7Rz2Lp9Xw4Tn8Kb3Vy6Hc1Jd5Gf0Sa" * 3 + "Ue"
# An AWS-style secret access key: base64 alphabet, with '+' and '/'.
AWS = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SECRET = "tok-" + "Zq8vN3xLp0RtY7wK2mC5bH9dF4gJ6sA1eU3iO7"


def _common_forms(value: str) -> dict[str, str]:
    raw = value.encode()
    return {
        "base64 wrapped at 76 (the base64 command, encodebytes, MIME)": base64.encodebytes(raw).decode(),
        "base64 wrapped at 64 (PEM)": "\n".join(textwrap.wrap(base64.b64encode(b"k=" + raw).decode(), 64)),
        "hex wrapped at 60 (xxd -p)": "\n".join(textwrap.wrap(raw.hex(), 60)),
        "hex bytes separated by spaces (bytes.hex(' '))": raw.hex(" "),
        "hex bytes separated by colons": raw.hex(":"),
        "base85 (base64.b85encode)": base64.b85encode(raw).decode(),
        "ascii85 (base64.a85encode)": base64.a85encode(raw).decode(),
        "pprint of its characters": pprint.pformat(list(value)),
    }


@pytest.mark.parametrize("name", sorted(_common_forms(LONG)))
def test_common_encodings_of_a_long_credential_are_redacted(name):
    r = Redactor({"SERVICE_TOKEN": LONG})
    text = _common_forms(LONG)[name]
    out = r.redact(text)
    assert out != text and "[redacted:SERVICE_TOKEN]" in out, (name, text[:120])


def test_the_environment_piped_through_base64_is_redacted():
    """`env | base64` (or base64.encodebytes of the environment): the base64 command wraps its
    output at 76 characters, so a 40-character token is split across two lines in most layouts."""
    token = "ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
    r = Redactor({"GITHUB_TOKEN": token})
    missed = []
    for pad in range(40):
        blob = f"PATH=/usr/bin\nHOME=/work\nNOTE={'x' * pad}\nGITHUB_TOKEN={token}\nLANG=C.UTF-8\n".encode()
        text = base64.encodebytes(blob).decode()
        if r.redact(text) == text:
            missed.append(pad)
    assert not missed, f"unredacted for {len(missed)} of 40 layouts"


def test_url_quoting_with_the_default_safe_slash_is_redacted():
    r = Redactor({"AWS_SECRET_ACCESS_KEY": AWS})
    for text in (urllib.parse.quote(AWS), f"https://example.test/x?sig={urllib.parse.quote(AWS)}"):
        assert r.redact(text) != text, text


# ------------------------------------------------------------------ the tasks relay

@pytest.fixture()
def tasks_setup(monkeypatch):
    """A tasks agent whose config names the credential (so its redactor knows it), on a runner
    whose sandboxes carry the same value as a plain setting: one-shot execs never hold a
    credential, so this is how a candidate gets to print it at all, and only the host-side
    redaction of what the relay decodes stands between it and the store."""
    require_bwrap()
    from ouroboros.actors.sandbox_runner import SandboxRunner
    from ouroboros.config import Config, SandboxConfig

    monkeypatch.setenv("OUROBOROS_REVIEW_TOKEN", SECRET)
    cfg = Config()
    cfg.sandbox.backend = "bwrap"
    cfg.sandbox.timeout_s = 3
    cfg.sandbox.env_from = {"SERVICE_TOKEN": "OUROBOROS_REVIEW_TOKEN"}
    runner = SandboxRunner(SandboxConfig(timeout_s=3, env={"SERVICE_VALUE": SECRET}))
    assert runner.cfg.backend == "bwrap"  # the programs below only ever run in the sandbox
    yield cfg, runner
    runner.cleanup()


class _Scripted:
    def __init__(self, replies):
        from ouroboros.backends.scripted import ScriptedBackend

        self.backend = ScriptedBackend(script=replies)

    def generate(self, requests):
        return self.backend.generate(requests)


def _tasks_episodes(cfg, runner, codes: list[str]):
    from ouroboros.actors.agent import TasksAgent
    from ouroboros.envs.tasks import load_tasks

    task = next(t for t in load_tasks() if t.id == "fizzbuzz")
    replies = [json.dumps({"action": "run", "data": code, "notes": ""}) for code in codes]
    agent = TasksAgent([_Scripted(replies)], [runner], max_new_tokens=1 << 20, cfg=cfg)
    return agent.run_episodes([task], samples=len(codes), round_=0, temperature=0.0)


def test_the_tasks_relay_does_not_undo_the_runners_redaction(tasks_setup):
    """A candidate prints the credential one character per line; through the harness's JSON
    lines the separators arrive escaped, and the host decodes them: what it decodes is redacted."""
    cfg, runner = tasks_setup
    r = Redactor({"SERVICE_TOKEN": SECRET})
    codes = ["import os\nprint('\\n'.join(os.environ['SERVICE_VALUE']))",
             "import os, sys\nprint('\\t'.join(os.environ['SERVICE_VALUE']), file=sys.stderr)"]
    for traj in _tasks_episodes(cfg, runner, codes):
        stored = traj.steps[0].result  # what the recorder writes (completions.exec_result)
        assert "[redacted:SERVICE_TOKEN]" in stored.stdout + stored.stderr
        assert not r.found(stored.stdout) and not r.found(stored.stderr), (stored.stdout[:200], stored.stderr[:200])
        squashed = "".join((stored.stdout + stored.stderr).split())
        assert SECRET not in squashed


def test_a_credential_cut_by_the_harness_stream_cap_loses_its_head_too(tasks_setup):
    """The harness keeps the candidate's first `stream_cap` bytes of stdout; a credential that
    straddles that cut leaves its head at the end of the stored stdout, which the host's
    redaction of the decoded stream removes as it would a plain exec's cut."""
    from ouroboros.envs.tasks import harness

    cfg, runner = tasks_setup
    job = harness.prepare([harness.Unit("", [], 1.0)], cfg.sandbox.output_bytes)
    cap = json.loads(job.files[harness.JOB_FILE])["units"][0]["stream_cap"]
    code = f"import os, sys\nsys.stdout.write('A' * ({cap} - 30) + os.environ['SERVICE_VALUE'])"
    [traj] = _tasks_episodes(cfg, runner, [code])
    stored = traj.steps[0].result
    assert stored.truncated and stored.stdout.endswith("[redacted:SERVICE_TOKEN]"), stored.stdout[-60:]
    assert SECRET[:12] not in stored.stdout


# ------------------------------------------------------------------ build logs

def test_a_failed_builds_message_and_log_leave_the_runner_redacted(monkeypatch):
    """A real docker build whose RUN step decodes the credential (written into the Dockerfile
    in a form no redaction looks for, byte values minus one) and prints it before failing: the
    BuildFailed that leaves the runner carries the log, redacted."""
    import os

    from ouroboros.actors.sandbox_runner import SandboxRunner
    from ouroboros.config import SandboxConfig
    from ouroboros.sandbox import BuildFailed, SandboxUnavailable

    monkeypatch.setenv("OUROBOROS_REVIEW_TOKEN", SECRET)
    cfg = SandboxConfig(backend="docker", env_from={"SERVICE_TOKEN": "OUROBOROS_REVIEW_TOKEN"}, spares=0,
                        build_timeout_s=120)
    try:
        runner = SandboxRunner(cfg, "test-secrets-review-build")
    except SandboxUnavailable as exc:
        if os.environ.get("OUROBOROS_REQUIRE_SANDBOX") == "1":
            pytest.fail(f"a Docker engine is required here (OUROBOROS_REQUIRE_SANDBOX=1): {exc}")
        pytest.skip(f"no Docker engine: {exc}")
    shifted = [b - 1 for b in SECRET.encode()]
    step = f"python3 -c \"print(bytes(b + 1 for b in {shifted}).decode()); raise SystemExit(3)\""
    try:
        session = runner.open_session()
        with pytest.raises(BuildFailed) as failed:
            runner.build(session, f"FROM ouroboros-sandbox:base\nRUN {step}\n")
        assert "[redacted:SERVICE_TOKEN]" in failed.value.log
        assert SECRET not in str(failed.value) and SECRET not in failed.value.log
    finally:
        runner.cleanup()

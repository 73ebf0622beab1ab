"""Redaction of secrets (ouroboros/secrets.py): every common encoding, cut edges, completions,
sandbox output leaving the runner, and where the values come from."""
import base64
import codecs
import json
import urllib.parse

import pytest

from conftest import require_bwrap
from ouroboros.secrets import MIN_SECRET_CHARS, Redactor, SecretError, configured_secrets, resolve
from ouroboros.types import Completion

SECRET = 'tok-9f2c"a\\7e51b0d3'  # a quote and a backslash: escaped forms differ from the raw one


def encodings(value: str) -> dict[str, str]:
    raw = value.encode()
    return {
        "raw": f"before {value} after", "reversed": value[::-1], "hex": raw.hex(), "HEX": raw.hex().upper(),
        "reversed hex": raw[::-1].hex(), "base64": base64.b64encode(raw).decode(),
        "base64 inside a longer text": base64.b64encode(b"id=" + raw + b";").decode(),
        "base64 at offset 1": base64.b64encode(b"x" + raw).decode(),
        "urlsafe base64": base64.urlsafe_b64encode(b"ab" + raw).decode(),
        "base32": base64.b32encode(b"key:" + raw).decode(), "rot13": codecs.encode(value, "rot13"),
        "percent": urllib.parse.quote(value, safe=""), "json": json.dumps({"k": value}),
        "json twice": json.dumps(json.dumps({"k": value})), "repr": repr([value]),
        "characters": str(list(value)), "spaced": " ".join(value), "bytes": str(list(raw)),
        "reversed base64": base64.b64encode(raw[::-1]).decode(),
    }


@pytest.mark.parametrize("name", sorted(encodings(SECRET)))
def test_every_common_encoding_is_redacted(name):
    r = Redactor({"SERVICE_TOKEN": SECRET})
    text = encodings(SECRET)[name]
    out = r.redact(text)
    assert "[redacted:SERVICE_TOKEN]" in out, (name, out)
    assert not r.found(out)
    for needle in (SECRET, SECRET[::-1], SECRET.encode().hex(), base64.b64encode(SECRET.encode()).decode()[:12]):
        assert needle not in out


def test_ordinary_text_and_other_values_are_left_alone():
    r = Redactor({"SERVICE_TOKEN": SECRET})
    text = "exit code 0\nthe sum is 338350; tok-9f2c is a prefix of nothing here, 12345678"
    assert r.redact(text) == text
    assert Redactor({}).redact(SECRET) == SECRET and not Redactor({})


def test_a_secret_cut_by_an_output_cap_loses_its_head_too():
    r = Redactor({"SERVICE_TOKEN": SECRET})
    cut = "x" * 100 + SECRET[:6]  # the capture stopped six characters into the secret
    assert r.redact(cut) == cut  # not known to be cut: six characters may be anything
    assert r.redact(cut, cut=True) == "x" * 100 + "[redacted:SERVICE_TOKEN]"
    hexed = "y" * 10 + SECRET.encode().hex()[:9]
    assert r.redact(hexed, cut=True) == "y" * 10 + "[redacted:SERVICE_TOKEN]"
    assert r.redact("ends in tok", cut=True) == "ends in tok"  # too short to be told from text


def test_a_completion_that_carried_a_secret_keeps_no_token_ids():
    r = Redactor({"SERVICE_TOKEN": SECRET})
    clean = Completion("q", "print(1)", [1, 2], [-0.1, -0.2], 3, "hf")
    assert r.completion(clean) is clean
    dirty = Completion("q", f"the token is {SECRET}", list(range(9)), [-0.1] * 9, 3, "hf")
    out = r.completion(dirty)
    assert out.text == "the token is [redacted:SERVICE_TOKEN]" and out.redacted
    assert out.token_ids == [] and out.logprobs == [] and out.completion_tokens == 9 and out.weights_version == 3


def test_values_come_from_the_host_environment_and_short_or_missing_ones_are_refused():
    assert resolve({"TOKEN": "HOST_TOKEN"}, environ={"HOST_TOKEN": SECRET}) == {"TOKEN": SECRET}
    with pytest.raises(SecretError, match="HOST_TOKEN.*not set.*export HOST_TOKEN"):
        resolve({"TOKEN": "HOST_TOKEN"}, environ={})
    with pytest.raises(SecretError, match=f"at least {MIN_SECRET_CHARS}"):
        resolve({"TOKEN": "HOST_TOKEN"}, environ={"HOST_TOKEN": "abc"})

    from ouroboros.config import load_config

    cfg = load_config("configs/experiment-openai.yaml", ["sandbox.env_from={TOKEN: HOST_TOKEN}"])
    found = configured_secrets(cfg, environ={"HOST_TOKEN": SECRET, "OPENAI_API_KEY": "sk-" + "k" * 20,
                                             "UNRELATED": "x" * 20})
    assert found == {"TOKEN": SECRET, "OPENAI_API_KEY": "sk-" + "k" * 20}


def test_sandbox_output_leaves_the_runner_redacted_and_one_shot_execs_hold_no_credential(monkeypatch):
    require_bwrap()
    from ouroboros.actors.sandbox_runner import SandboxRunner
    from ouroboros.config import SandboxConfig

    monkeypatch.setenv("OUROBOROS_TEST_TOKEN", SECRET)
    runner = SandboxRunner(SandboxConfig(env_from={"SERVICE_TOKEN": "OUROBOROS_TEST_TOKEN"}, output_bytes=4096,
                                         spares=0))
    try:
        # A one-shot exec runs a task's candidate or a goal's reference: no credential there.
        assert runner.exec("import os\nprint(os.environ.get('SERVICE_TOKEN'))").stdout == "None\n"
        session = runner.open_session()  # an experiment's sandbox holds it
        program = ("import os, sys, base64\ns = os.environ['SERVICE_TOKEN']\nprint(s, s[::-1], s.encode().hex())\n"
                   "print(base64.b64encode(b'z' + s.encode()).decode(), file=sys.stderr)\nraise SystemExit(s)")
        result = runner.exec(program, session=session)
        assert result.exit_code == 1
        assert "[redacted:SERVICE_TOKEN]" in result.stdout and "[redacted:SERVICE_TOKEN]" in result.stderr
        assert SECRET not in result.stdout + result.stderr
        cut = runner.exec("import os, sys\nsys.stdout.write('A' * (4096 - 5) + os.environ['SERVICE_TOKEN'])",
                          session=session)
        assert cut.truncated and cut.stdout.endswith("[redacted:SERVICE_TOKEN]") and SECRET[:5] not in cut.stdout
    finally:
        runner.cleanup()


def test_skeleton_pass_is_linear_for_secrets_made_of_punctuation():
    import time

    secret = "-_-_-_-_-_-_-_-_x"  # a run of separators: a backtracking pattern took minutes per MiB
    r = Redactor({"ODD": secret + "yz0123"})
    text = ("-_" * 8 + "\n") * 60_000
    started = time.perf_counter()
    assert r.redact(text) == text
    assert time.perf_counter() - started < 5

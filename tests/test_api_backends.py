"""The Anthropic and OpenAI backends, through the official SDKs, against loopback fakes.

The fakes (tests/api_servers.py, fixtures in conftest.py) listen on 127.0.0.1 only,
and the `loopback_only` fixture fails any connection elsewhere. Error replies carry
`retry-after-ms: 1`, so the SDKs' retries take milliseconds.
"""
from __future__ import annotations

import socket

import pytest

from ouroboros.backends import BackendError, backend_class
from ouroboros.types import Request

ANTHROPIC_KEY = "sk-ant-test-SECRET-0123456789abcdef"
OPENAI_KEY = "sk-test-SECRET-0123456789abcdefXYZ"


def _req(rid: str, text: str, system: str | None = None, **kw) -> Request:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}
    ]
    return Request(id=rid, messages=messages, **kw)


def _assert_secret_free(message: str, key: str) -> None:
    assert key not in message
    assert "SECRET" not in message  # no fragment of it either
    assert key[-4:] not in message


@pytest.fixture
def anthropic_backend(anthropic_server, monkeypatch):
    from ouroboros.backends.anthropic_api import AnthropicBackend

    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)

    def make(**kw):
        kw.setdefault("max_retries", 4)
        kw.setdefault("timeout_s", 5.0)
        b = AnthropicBackend("claude-test", base_url=anthropic_server.base_url, **kw)
        made.append(b)
        return b

    made: list = []
    yield make
    for b in made:
        b.close()


@pytest.fixture
def openai_backend(openai_server, monkeypatch):
    from ouroboros.backends.openai_api import OpenAIBackend

    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)

    def make(**kw):
        kw.setdefault("max_retries", 4)
        kw.setdefault("timeout_s", 5.0)
        b = OpenAIBackend("gpt-test", base_url=openai_server.base_url, **kw)
        made.append(b)
        return b

    made: list = []
    yield make
    for b in made:
        b.close()


def test_registry_names_resolve():
    from ouroboros.backends.anthropic_api import AnthropicBackend
    from ouroboros.backends.openai_api import OpenAIBackend

    assert backend_class("anthropic") is AnthropicBackend
    assert backend_class("openai") is OpenAIBackend
    assert AnthropicBackend.name == "anthropic" and OpenAIBackend.name == "openai"


# -- Anthropic --------------------------------------------------------------------------


def test_anthropic_generate(anthropic_server, anthropic_backend):
    backend = anthropic_backend()
    backend.weights_version = 3
    anthropic_server.canned["ignored: canned"] = "one two three four five six"
    reqs = [
        _req("a", "ignored: canned", max_new_tokens=4, temperature=0.25),
        _req("b", "hello world", system="be brief", max_new_tokens=64, temperature=0.7),
    ]
    out = backend.generate(reqs)

    assert [c.request_id for c in out] == ["a", "b"]
    first, second = out
    assert first.text == "one two three four"
    assert first.finish_reason == "length"
    assert first.prompt_tokens == 2
    assert second.text == "dlrow olleh"
    assert second.finish_reason == "stop"
    assert second.prompt_tokens == 4  # "be brief" + "hello world"
    for c in out:
        assert c.backend == "anthropic"
        assert c.weights_version == 3
        assert c.token_ids == [] and c.logprobs == []
    assert [c.completion_tokens for c in out] == [4, 2]  # the fake's usage.output_tokens

    posts = anthropic_server.posts
    assert len(posts) == 2
    assert all(r.path == "/v1/messages" for r in posts)
    assert all(anthropic_server.presented_key(r) == ANTHROPIC_KEY for r in posts)
    assert all("anthropic-version" in r.headers for r in posts)
    by_text = {r.body["messages"][-1]["content"]: r.body for r in posts}
    body = by_text["hello world"]
    assert body["model"] == "claude-test"
    assert body["max_tokens"] == 64
    assert body["temperature"] == 0.7
    assert body["system"] == "be brief"
    assert body["messages"] == [{"role": "user", "content": "hello world"}]
    assert by_text["ignored: canned"]["temperature"] == 0.25
    assert "system" not in by_text["ignored: canned"]


def test_anthropic_joins_system_turns_and_keeps_dialogue(anthropic_server, anthropic_backend):
    backend = anthropic_backend()
    req = Request(
        id="m",
        messages=[
            {"role": "system", "content": "rule one"},
            {"role": "user", "content": "abc"},
            {"role": "assistant", "content": "cba"},
            {"role": "system", "content": "rule two"},
            {"role": "user", "content": "xyz"},
        ],
    )
    (c,) = backend.generate([req])
    assert c.text == "zyx"
    body = anthropic_server.posts[0].body
    assert body["system"] == "rule one\n\nrule two"
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]


def test_anthropic_key_from_custom_env_var(anthropic_server, anthropic_backend, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.setenv("MY_CLAUDE_KEY", "sk-ant-other-key-42")
    anthropic_backend(api_key_env="MY_CLAUDE_KEY").generate([_req("a", "hi")])
    assert anthropic_server.presented_key(anthropic_server.posts[0]) == "sk-ant-other-key-42"


def test_anthropic_retries_through_429_and_500(anthropic_server, anthropic_backend):
    anthropic_server.fail_next(2, 429)
    anthropic_server.fail_next(1, 500)
    (c,) = anthropic_backend(max_retries=3).generate([_req("a", "retry me")])
    assert c.text == "em yrter"
    posts = anthropic_server.posts
    assert len(posts) == 4
    # retry-after-ms: 1 was honoured: the SDK's own backoff would wait at least 0.375 + 0.75 + 1.5 s.
    assert posts[-1].at - posts[0].at < 1.0


def test_anthropic_always_500_raises_clear_error(anthropic_server, anthropic_backend):
    anthropic_server.fail_always(500)
    with pytest.raises(BackendError) as info:
        anthropic_backend(max_retries=2).generate([_req("r1", "x")])
    msg = str(info.value)
    assert len(anthropic_server.posts) == 3  # first try + 2 retries
    assert "HTTP 500" in msg and "api_error" in msg and "Internal server error" in msg
    assert "claude-test" in msg and "'r1'" in msg and "max_retries" in msg
    _assert_secret_free(msg, ANTHROPIC_KEY)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_anthropic_429_exhausted_says_quota(anthropic_server, anthropic_backend):
    anthropic_server.fail_always(429)
    with pytest.raises(BackendError, match=r"HTTP 429.*rate_limit_error.*quota"):
        anthropic_backend(max_retries=1).generate([_req("a", "x")])
    assert len(anthropic_server.posts) == 2


def test_anthropic_401_is_not_retried_and_names_env_var(anthropic_server, anthropic_backend):
    anthropic_server.expected_key = "sk-ant-the-right-key"
    with pytest.raises(BackendError) as info:
        anthropic_backend().generate([_req("a", "x")])
    msg = str(info.value)
    assert len(anthropic_server.posts) == 1
    assert "HTTP 401" in msg and "authentication_error" in msg and "ANTHROPIC_API_KEY" in msg
    _assert_secret_free(msg, ANTHROPIC_KEY)


def test_anthropic_missing_key(anthropic_server, monkeypatch):
    from ouroboros.backends.anthropic_api import AnthropicBackend

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(BackendError, match="ANTHROPIC_API_KEY"):
        AnthropicBackend("claude-test", base_url=anthropic_server.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "   ")
    with pytest.raises(BackendError, match="ANTHROPIC_API_KEY"):
        AnthropicBackend("claude-test", base_url=anthropic_server.base_url)
    monkeypatch.delenv("JUDGE_KEY", raising=False)
    with pytest.raises(BackendError, match="JUDGE_KEY"):
        AnthropicBackend("claude-test", base_url=anthropic_server.base_url, api_key_env="JUDGE_KEY")
    assert anthropic_server.requests == []


def test_anthropic_drops_temperature_if_model_rejects_it(anthropic_server, anthropic_backend):
    anthropic_server.reject_params = {"temperature"}
    backend = anthropic_backend()
    out = backend.generate([_req("a", "abc")])
    out += backend.generate([_req("b", "def")])
    assert [c.text for c in out] == ["cba", "fed"]
    sent = [("temperature" in r.body) for r in anthropic_server.posts]
    assert sent == [True, False, False]  # rejected once, then never sent again


def test_anthropic_out_of_range_temperature_is_an_error(anthropic_server, anthropic_backend):
    # A 400 about the *value* (not an unsupported field) must surface, not be papered over.
    anthropic_server.fail_next(1, 400)
    with pytest.raises(BackendError, match="HTTP 400"):
        anthropic_backend().generate([_req("a", "x", temperature=1.7)])
    assert len(anthropic_server.posts) == 1


def test_anthropic_concurrency_and_order(anthropic_server, anthropic_backend):
    anthropic_server.delay_s = 0.1
    reqs = [_req(f"r{i}", f"msg{i}") for i in range(8)]
    out = anthropic_backend(concurrency=4).generate(reqs)
    assert [c.request_id for c in out] == [r.id for r in reqs]
    assert [c.text for c in out] == [f"msg{i}"[::-1] for i in range(8)]
    assert 2 <= anthropic_server.max_in_flight <= 4  # requests overlapped at the server, at most 4 at once


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_anthropic_connection_refused(loopback_only, monkeypatch):
    from ouroboros.backends.anthropic_api import AnthropicBackend

    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    b = AnthropicBackend("claude-test", base_url=f"http://127.0.0.1:{_closed_port()}", max_retries=0)
    with pytest.raises(BackendError, match="could not connect") as info:
        b.generate([_req("a", "x")])
    _assert_secret_free(str(info.value), ANTHROPIC_KEY)


def test_anthropic_refuses_weight_updates(anthropic_backend):
    with pytest.raises(BackendError, match="no local weights"):
        anthropic_backend().load_weights(None, (), "lora", 1)


# -- OpenAI -----------------------------------------------------------------------------


def test_openai_generate(openai_server, openai_backend):
    backend = openai_backend()
    backend.weights_version = 5
    openai_server.canned["canned anyway"] = "alpha beta gamma delta"
    reqs = [
        _req("a", "canned anyway", max_new_tokens=2, temperature=0.3, top_p=0.9, seed=7),
        _req("b", "hello world", system="sys prompt", max_new_tokens=50),
    ]
    out = backend.generate(reqs)

    assert [c.request_id for c in out] == ["a", "b"]
    first, second = out
    assert (first.text, first.finish_reason, first.prompt_tokens) == ("alpha beta", "length", 2)
    assert (second.text, second.finish_reason, second.prompt_tokens) == ("dlrow olleh", "stop", 4)
    for c in out:
        assert c.backend == "openai" and c.weights_version == 5
        assert c.token_ids == [] and c.logprobs == []
    assert [c.completion_tokens for c in out] == [2, 2]  # the fake's usage.completion_tokens

    posts = openai_server.posts
    assert all(r.path == "/v1/chat/completions" for r in posts)
    assert all(r.headers["authorization"] == f"Bearer {OPENAI_KEY}" for r in posts)
    assert all(openai_server.presented_key(r) == OPENAI_KEY for r in posts)
    by_text = {r.body["messages"][-1]["content"]: r.body for r in posts}
    a = by_text["canned anyway"]
    assert a["model"] == "gpt-test"
    assert a["max_completion_tokens"] == 2 and "max_tokens" not in a
    assert (a["temperature"], a["top_p"], a["seed"]) == (0.3, 0.9, 7)
    assert "logprobs" not in a
    b = by_text["hello world"]
    assert b["messages"] == [
        {"role": "system", "content": "sys prompt"},
        {"role": "user", "content": "hello world"},
    ]
    assert "seed" not in b  # seed=None is not sent


def test_openai_logprobs(openai_server, openai_backend):
    (c,) = openai_backend(request_logprobs=True).generate([_req("a", "cba fed")])
    assert c.text == "def abc"
    assert c.logprobs == [-0.5, -1.0]
    assert openai_server.posts[0].body["logprobs"] is True


def test_openai_max_tokens_param_choice_and_fallback(openai_server, openai_backend):
    (c,) = openai_backend(max_tokens_param="max_tokens").generate([_req("a", "x y", max_new_tokens=9)])
    body = openai_server.posts[0].body
    assert body["max_tokens"] == 9 and "max_completion_tokens" not in body

    # A server that takes only `max_tokens`: the default field is rejected once, then swapped.
    openai_server.requests.clear()
    openai_server.reject_params = {"max_completion_tokens"}
    backend = openai_backend()
    out = backend.generate([_req("a", "abc", max_new_tokens=1)]) + backend.generate([_req("b", "de")])
    assert [c.text for c in out] == ["cba", "ed"]
    fields = [("max_completion_tokens" in r.body, "max_tokens" in r.body) for r in openai_server.posts]
    assert fields == [(True, False), (False, True), (False, True)]
    with pytest.raises(BackendError, match="max_tokens_param"):
        openai_backend(max_tokens_param="tokens")


def test_openai_retries_through_429_and_500(openai_server, openai_backend):
    openai_server.fail_next(1, 429)
    openai_server.fail_next(2, 500)
    (c,) = openai_backend(max_retries=3).generate([_req("a", "again")])
    assert c.text == "niaga"
    posts = openai_server.posts
    assert len(posts) == 4
    assert posts[-1].at - posts[0].at < 1.0  # the server's retry-after was honoured, not the SDK's backoff


def test_openai_always_500_raises_clear_error(openai_server, openai_backend):
    openai_server.fail_always(500)
    with pytest.raises(BackendError) as info:
        openai_backend(max_retries=1).generate([_req("r9", "x")])
    msg = str(info.value)
    assert len(openai_server.posts) == 2
    assert "HTTP 500" in msg and "The server had an error" in msg and "max_retries" in msg
    assert "gpt-test" in msg and "'r9'" in msg
    _assert_secret_free(msg, OPENAI_KEY)


def test_openai_401_redacts_the_echoed_key(openai_server, openai_backend):
    openai_server.expected_key = "sk-the-right-one-000000"
    with pytest.raises(BackendError) as info:
        openai_backend().generate([_req("a", "x")])
    msg = str(info.value)
    assert len(openai_server.posts) == 1
    assert "HTTP 401" in msg and "invalid_api_key" in msg and "OPENAI_API_KEY" in msg
    assert "Incorrect API key provided" in msg
    _assert_secret_free(msg, OPENAI_KEY)
    assert OPENAI_KEY[:5] + "*" not in msg  # the server's masked echo is redacted too


def test_openai_missing_key(openai_server, monkeypatch):
    from ouroboros.backends.openai_api import OpenAIBackend

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(BackendError, match="OPENAI_API_KEY"):
        OpenAIBackend("gpt-test", base_url=openai_server.base_url)
    monkeypatch.delenv("VLLM_KEY", raising=False)
    with pytest.raises(BackendError, match="VLLM_KEY"):
        OpenAIBackend("gpt-test", base_url=openai_server.base_url, api_key_env="VLLM_KEY")
    assert openai_server.requests == []


def test_openai_concurrency_and_order(openai_server, openai_backend):
    openai_server.delay_s = 0.1
    reqs = [_req(f"r{i}", f"q{i}") for i in range(6)]
    out = openai_backend(concurrency=3).generate(reqs)
    assert [c.text for c in out] == [f"q{i}"[::-1] for i in range(6)]
    assert 2 <= openai_server.max_in_flight <= 3


def test_openai_connection_refused(loopback_only, monkeypatch):
    from ouroboros.backends.openai_api import OpenAIBackend

    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    b = OpenAIBackend("gpt-test", base_url=f"http://127.0.0.1:{_closed_port()}/v1", max_retries=0)
    with pytest.raises(BackendError, match="could not connect"):
        b.generate([_req("a", "x")])


def test_loopback_guard_blocks_other_addresses(loopback_only):
    with pytest.raises(AssertionError, match="non-loopback"):
        socket.create_connection(("192.0.2.1", 9), timeout=0.1)  # TEST-NET-1, never routed

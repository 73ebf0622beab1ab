"""Secrets: credentials named by host environment variable, and their redaction.

A config never holds a secret's value. It names the host environment variable that holds it:
`sandbox.env_from` maps a variable inside the sandbox to a host variable, and API keys are named
by `generator.api.api_key_env` (or the provider's default variable) and the research `*_env`
fields. The stored config therefore records names only. Values are read from the environment of
the process that needs them (a sandbox runner, an agent, an API backend), so they never cross a
config dump, a command line or a Ray call argument.

Redaction happens once, where outside text enters the system, on the whole text before anything
cuts it:
- sandbox output: `SandboxRunner` returns ExecResults, build logs and files already redacted;
- model text: agents redact each completion as it arrives (a completion that carried a secret
  also loses its token ids, which would spell it out again);
- tool output (web pages, search results), where the cycle receives it.
Everything downstream (the prompt's history, the DB, FTS, Parquet, git, logs, traces) only ever
sees redacted text.

A program can print a secret encoded, so each secret is also looked for reversed, in hex, base64
and base32 (at every byte alignment, so an encoding of a longer text that contains the secret is
caught too), percent-encoded, ROT13, as a list of its characters or byte values, escaped as JSON or a
repr would write it, and cut at the edge of a truncated stream.
"""
from __future__ import annotations

import base64
import codecs
import dataclasses
import json
import os
import re
import urllib.parse
from typing import Iterable

# Shorter values cannot be told from ordinary text, so redaction would either miss them or
# scramble unrelated output: such a value is refused when the secret is resolved.
MIN_SECRET_CHARS = 8
# Encoded forms shorter than this are skipped (a 3-character base64 core matches by chance).
MIN_VARIANT_CHARS = 6
# A cut stream may end inside a secret: a tail this long that starts a secret's form is redacted.
MIN_EDGE_CHARS = 4

# Names that say "credential": such a variable belongs in `sandbox.env_from`, never in
# `sandbox.env`, whose values are stored with the run's config.
_CREDENTIAL_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE)", re.I)

# Providers' default key variables, used when a config names none.
PROVIDER_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}


class SecretError(RuntimeError):
    """A secret named in the config cannot be used; the message says which and what to do."""


def looks_like_credential(name: str) -> bool:
    return bool(_CREDENTIAL_NAME.search(name))


def resolve(env_from: dict[str, str], where: str = "sandbox.env_from",
            environ: dict[str, str] | None = None) -> dict[str, str]:
    """{sandbox variable: value} read from the host variables `env_from` names."""
    environ = os.environ if environ is None else environ
    values = {}
    for inner, host in env_from.items():
        value = environ.get(host)
        if not value:
            raise SecretError(
                f"{where}.{inner} names the host environment variable {host!r}, which is not set in this "
                f"process: export {host}=... before starting (on a cluster, on every node)")
        if len(value) < MIN_SECRET_CHARS:
            raise SecretError(
                f"{where}.{inner}: the value of {host!r} has {len(value)} characters; secrets need at least "
                f"{MIN_SECRET_CHARS} to be redacted reliably (a short non-secret setting belongs in sandbox.env)")
        values[inner] = value
    return values


def configured_secrets(cfg, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Every secret this config uses, {label: value}, read from `environ`: the sandbox's
    credentials and the API keys of the model backend and of web search. A key that is not set
    is skipped here; the part that needs it says so when it starts."""
    environ = os.environ if environ is None else environ
    found = dict(resolve(cfg.sandbox.env_from, environ=environ))
    names: list[str] = []
    if cfg.generator.backend in PROVIDER_KEY_ENV:
        names.append(cfg.generator.api.api_key_env or PROVIDER_KEY_ENV[cfg.generator.backend])
    research = cfg.experiment.research
    if research.web_search:
        names += [research.google_api_key_env, research.google_engine_id_env]
    for name in names:
        value = environ.get(name)
        if value and len(value) >= MIN_SECRET_CHARS:
            found[name] = value
    return found


def _aligned_core(data: bytes, alignments: int, group_bits: int, encode) -> Iterable[str]:
    """The part of `encode(prefix + data)` that depends on `data` alone, for each length of
    prefix: an encoded text that contains the secret at any offset contains one of these."""
    for k in range(alignments):
        text = encode(b"\0" * k + data).rstrip("=")
        first = -(-8 * k // group_bits)  # the first symbol that starts inside `data`
        last = (8 * (k + len(data))) // group_bits  # symbols wholly inside `data` end here
        yield text[first:last]


def variants(value: str) -> list[str]:
    """The literal forms of `value` that redaction looks for."""
    raw = value.encode("utf-8")
    # Escaped as JSON or a Python repr would write it (a JSON line of a report, an exception's
    # repr), where quotes, backslashes and non-ASCII characters no longer read as themselves.
    forms = {value, value[::-1], codecs.encode(value, "rot13"), urllib.parse.quote(value, safe=""),
             json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1], repr(value)[1:-1],
             json.dumps(json.dumps(value))[3:-3]}
    forms.update(_aligned_core(raw, 3, 6, lambda b: base64.b64encode(b).decode()))
    forms.update(_aligned_core(raw, 3, 6, lambda b: base64.urlsafe_b64encode(b).decode()))
    forms.update(_aligned_core(raw, 5, 5, lambda b: base64.b32encode(b).decode()))
    forms.update(_aligned_core(raw[::-1], 3, 6, lambda b: base64.b64encode(b).decode()))
    return sorted((f for f in forms if len(f) >= MIN_VARIANT_CHARS), key=len, reverse=True)


def _spread(units: list[str], gap: str) -> str:
    return gap.join(re.escape(u) for u in units)


def _spread_chars(value: str, gap: str) -> str:
    """`value`'s characters with up to a few separators between them, each character as itself
    or escaped as a repr or JSON would write it ("['t', 'o', '\\\\', ...]")."""
    def one(c: str) -> str:
        options = sorted({c, repr(c)[1:-1], json.dumps(c)[1:-1]}, key=len, reverse=True)
        return "(?:" + "|".join(re.escape(o) for o in options) + ")"

    return gap.join(one(c) for c in value)


class Redactor:
    """Replaces every known secret, and its common encodings, with `[redacted:LABEL]`."""

    def __init__(self, secrets_by_label: dict[str, str]) -> None:
        self.labels: dict[str, str] = {}  # any matched form -> label
        patterns: list[str] = []
        self._prefixes: list[tuple[str, str]] = []  # (form, label) for cut edges
        for label, value in secrets_by_label.items():
            if not value or len(value) < MIN_SECRET_CHARS:
                continue
            for form in variants(value):
                self.labels.setdefault(form, label)
                patterns.append(re.escape(form))
                self._prefixes.append((form, label))
            raw = value.encode("utf-8")
            # Hex in either case, and the value's characters or byte values printed as a list
            # ("s e c r e t", "['s', 'e', ...]", "[115, 101, ...]").
            patterns.append("(?i:" + re.escape(raw.hex()) + ")")
            patterns.append("(?i:" + re.escape(raw[::-1].hex()) + ")")
            patterns.append(_spread_chars(value, r"[\W_]{1,4}"))
            patterns.append(r"(?<!\d)" + _spread([str(b) for b in raw], r"\D{1,4}") + r"(?!\d)")
            self._prefixes.append((raw.hex(), label))
        self._by_pattern = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
        self._values = {label: v for label, v in secrets_by_label.items() if v and len(v) >= MIN_SECRET_CHARS}

    def __bool__(self) -> bool:
        return self._by_pattern is not None

    def _label(self, match: re.Match) -> str:
        text = match.group(0)
        label = self.labels.get(text)
        if label is None:  # a hex or list form: find whose it is
            squashed = re.sub(r"[\W_]", "", text).lower()
            for name, value in self._values.items():
                raw = value.encode("utf-8")
                if squashed in (raw.hex(), raw[::-1].hex(), re.sub(r"[\W_]", "", value).lower()) or \
                        re.sub(r"\D+", ",", text).strip(",") == ",".join(str(b) for b in raw):
                    return name
            return "secret"
        return label

    def redact(self, text: str, cut: bool = False) -> str:
        """`text` with every secret replaced. `cut`: the text was truncated at its end, so a
        secret may have been cut in two; a tail that begins one of its forms goes too."""
        if not text or self._by_pattern is None:
            return text
        text = self._by_pattern.sub(lambda m: f"[redacted:{self._label(m)}]", text)
        if cut:
            text = self._redact_cut_tail(text)
        return text

    def _redact_cut_tail(self, text: str) -> str:
        """Replace the longest tail of `text` (at least MIN_EDGE_CHARS) that begins a form of a
        secret: the rest of that form was cut off."""
        lowered = text.lower()
        best, label = 0, ""
        for form, name in self._prefixes:
            form = form.lower()  # hex may come in either case; other forms rarely differ only in case
            for n in range(min(len(form) - 1, len(text)), max(best, MIN_EDGE_CHARS - 1), -1):
                if lowered.endswith(form[:n]):
                    best, label = n, name
                    break
        return text[:-best] + f"[redacted:{label}]" if best else text

    def redact_bytes(self, data: bytes) -> bytes:
        text = data.decode("utf-8", errors="surrogateescape")
        return self.redact(text).encode("utf-8", errors="surrogateescape")

    def result(self, result):
        """An ExecResult with its streams redacted; a stream cut at the output cap may end inside a
        secret, so its tail is checked too."""
        if self._by_pattern is None:
            return result
        return dataclasses.replace(result, stdout=self.redact(result.stdout, cut=result.truncated),
                                   stderr=self.redact(result.stderr, cut=result.truncated),
                                   error=self.redact(result.error))

    def completion(self, completion):
        """A model's completion with its text redacted. Its token ids would spell the secret out
        again, so a completion that carried one keeps no token ids or log-probs (a learner
        skips it) and says so."""
        if self._by_pattern is None or not self.found(completion.text):
            return completion
        return dataclasses.replace(completion, text=self.redact(completion.text), token_ids=[], logprobs=[],
                                   output_tokens=completion.completion_tokens, redacted=True)

    def found(self, text: str) -> bool:
        return bool(text) and self._by_pattern is not None and self._by_pattern.search(text) is not None


def redactor_for(cfg, environ: dict[str, str] | None = None) -> Redactor:
    return Redactor(configured_secrets(cfg, environ))

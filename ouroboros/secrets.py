"""Secrets: credentials named by host environment variable, and their redaction.

A config never holds a secret's value. It names the host environment variable that holds it:
`sandbox.env_from` maps a variable inside the sandbox to a host variable, and API keys are named
by `generator.api.api_key_env` (or the provider's default variable) and the research `*_env`
fields. The stored config therefore records names only. Values are read from the environment of
the process that needs them (a sandbox runner, an agent, an API backend), so they never cross a
config dump, a command line or a Ray call argument.

Credentials go only into experiment sessions' sandboxes; one-shot execs (a task's candidate, a
goal's reference program) never hold them.

Redaction happens once, where outside text enters the system, on the whole text before anything
cuts it:
- sandbox output: `SandboxRunner` returns ExecResults, build logs and files already redacted
  (and the tasks agent redacts again what the harness's relay decodes on the host);
- model text: agents redact each completion as it arrives (a completion that carried a secret
  also loses its token ids, which would spell it out again);
- tool output (web pages, search results), where the cycle receives it.
Everything downstream (the prompt's history, the DB, FTS, Parquet, git, logs, traces) only ever
sees redacted text.

A program can print a secret encoded, so redaction makes two passes. The exact pass looks for
each secret raw, reversed, ROT13, percent-, HTML-, JSON- and repr-escaped, and in base64, base32,
base85 and ascii85 at every byte alignment (so an encoding of a longer text that contains the
secret is caught too). The skeleton pass reduces the text to its letters and digits and looks
for the same forms reduced alike, plus hex and byte values: it catches a form wrapped into
lines (the `base64` command, PEM, `xxd -p`), hex with separators, a list of characters or byte
values, one character per line, another case. A stream cut at a cap is checked for a secret cut
in two at its end. What redaction cannot stop is deliberate exfiltration (a secret split,
shifted or compressed by the program): the boundary for that is that only sessions hold
credentials, and sandboxes have no network unless the config gives them one.
"""
from __future__ import annotations

import base64
import bisect
import codecs
import dataclasses
import html
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
# The skeleton pass (letters and digits only) needs longer forms and tails to tell a secret
# from the run of letters and digits that ordinary output concatenates into.
MIN_SKELETON_CHARS = 10
MIN_EDGE_SKELETON = 8

# Names that say "credential": such a variable belongs in `sandbox.env_from`, never in
# `sandbox.env`, whose values are stored with the run's config.
_CREDENTIAL_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE)", re.I)



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
    from ouroboros.backends import backend_class

    names: list[str] = []
    # An API backend names its provider's default key variable itself (`key_env`).
    default_key_env = getattr(backend_class(cfg.generator.backend), "key_env", None)
    if default_key_env:
        names.append(cfg.generator.api.api_key_env or default_key_env)
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


def _grouped_core(data: bytes, encode) -> Iterable[str]:
    """The same for the base85 encodings, which turn each whole 4-byte group into 5 symbols:
    the groups that lie wholly inside `data`, at each of the 4 offsets it can start at."""
    for k in range(4):
        skip = (4 - k) % 4  # bytes of `data` that share a group with the prefix
        whole = (len(data) - skip) // 4 * 4
        if whole >= 8:
            yield encode(data[skip:skip + whole])


def variants(value: str) -> list[str]:
    """The literal forms of `value` the exact pass looks for."""
    raw = value.encode("utf-8")
    # Escaped as JSON or a Python repr would write it (a JSON line of a report, an exception's
    # repr), where quotes, backslashes and non-ASCII characters no longer read as themselves; as
    # URLs and HTML quote it.
    forms = {value, value[::-1], codecs.encode(value, "rot13"), urllib.parse.quote(value, safe=""),
             urllib.parse.quote(value), urllib.parse.quote_plus(value), html.escape(value),
             json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1], repr(value)[1:-1],
             json.dumps(json.dumps(value))[3:-3]}
    forms.update(_encoded_cores(raw))
    forms.update(_aligned_core(raw[::-1], 3, 6, lambda b: base64.b64encode(b).decode()))
    return sorted((f for f in forms if len(f) >= MIN_VARIANT_CHARS), key=len, reverse=True)


def _encoded_cores(raw: bytes) -> set[str]:
    cores = set(_aligned_core(raw, 3, 6, lambda b: base64.b64encode(b).decode()))
    cores.update(_aligned_core(raw, 3, 6, lambda b: base64.urlsafe_b64encode(b).decode()))
    cores.update(_aligned_core(raw, 5, 5, lambda b: base64.b32encode(b).decode()))
    cores.update(_grouped_core(raw, lambda b: base64.b85encode(b).decode()))
    cores.update(_grouped_core(raw, lambda b: base64.a85encode(b).decode()))
    return cores


_ALNUM = re.compile(r"[A-Za-z0-9]+")


def _skeleton(text: str) -> str:
    return "".join(_ALNUM.findall(text)).lower()


def skeletons(value: str) -> list[str]:
    """What the skeleton pass looks for: forms of `value` reduced to their letters and digits,
    lowercased. Text reduced the same way contains one of these wherever a form was printed
    with anything but letters and digits in it or between its characters: wrapped into lines
    (the `base64` command, PEM, `xxd -p`), hex bytes with separators, a list of characters or of
    byte values, one character per line, in another case."""
    raw = value.encode("utf-8")
    forms = {value, value[::-1], raw.hex(), raw[::-1].hex(), "".join(str(b) for b in raw), *_encoded_cores(raw)}
    out = {_skeleton(f) for f in forms}
    return sorted((f for f in out if len(f) >= MIN_SKELETON_CHARS), key=len, reverse=True)


class Redactor:
    """Replaces every known secret, and its common encodings, with `[redacted:LABEL]`.

    Two passes over the whole text: an exact one (one regular expression of literal forms), then
    a skeleton one, which finds forms spread out by separators in letters and digits only
    (linear time, whatever characters a secret is made of)."""

    def __init__(self, secrets_by_label: dict[str, str]) -> None:
        self.labels: dict[str, str] = {}  # an exact form -> label
        self._skeletons: list[tuple[str, str]] = []  # (skeleton form, label)
        self._prefixes: list[tuple[str, str]] = []  # (form, label) for cut edges
        patterns: list[str] = []
        for label, value in secrets_by_label.items():
            if not value or len(value) < MIN_SECRET_CHARS:
                continue
            for form in variants(value):
                self.labels.setdefault(form, label)
                patterns.append(re.escape(form))
                self._prefixes.append((form, label))
            self._prefixes.append((value.encode("utf-8").hex(), label))
            self._skeletons += [(form, label) for form in skeletons(value)]
        self._exact = re.compile("|".join(patterns)) if patterns else None

    def __bool__(self) -> bool:
        return self._exact is not None or bool(self._skeletons)

    def redact(self, text: str, cut: bool = False) -> str:
        """`text` with every secret replaced. `cut`: the text was truncated at its end, so a
        secret may have been cut in two; a tail that begins one of its forms goes too."""
        if not text or not self:
            return text
        if self._exact is not None:
            text = self._exact.sub(lambda m: f"[redacted:{self.labels[m.group(0)]}]", text)
        text = self._redact_spread(text)
        if cut:
            text = self._redact_cut_tail(text)
        return text

    @staticmethod
    def _skeleton_of(text: str) -> tuple[list[tuple[int, int]], list[int], str]:
        """The letter-and-digit runs of `text`, where each starts in their concatenation, and
        that concatenation, lowercased."""
        runs = [(m.start(), m.end()) for m in _ALNUM.finditer(text)]
        starts, total = [], 0
        for a, b in runs:
            starts.append(total)
            total += b - a
        return runs, starts, "".join(text[a:b] for a, b in runs).lower()

    @staticmethod
    def _origin(runs: list[tuple[int, int]], starts: list[int], at: int) -> int:
        """The position in the text of the skeleton's character `at`."""
        n = bisect.bisect_right(starts, at) - 1
        return runs[n][0] + (at - starts[n])

    def _redact_spread(self, text: str) -> str:
        if not self._skeletons:
            return text
        runs, starts, squashed = self._skeleton_of(text)
        found: list[tuple[int, int, str]] = []
        for form, label in self._skeletons:
            at = squashed.find(form)
            while at != -1:
                found.append((at, at + len(form), label))
                at = squashed.find(form, at + len(form))
        spans: list[list] = []
        for at, end, label in sorted(found):
            a, b = self._origin(runs, starts, at), self._origin(runs, starts, end - 1) + 1
            if spans and a <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], b)
            else:
                spans.append([a, b, label])
        for a, b, label in reversed(spans):
            text = text[:a] + f"[redacted:{label}]" + text[b:]
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
        if best:
            return text[:-best] + f"[redacted:{label}]"
        # A spread form cut in two: the letters and digits at the end begin one.
        runs, starts, squashed = self._skeleton_of(text)
        for form, name in self._skeletons:
            for n in range(min(len(form) - 1, len(squashed)), MIN_EDGE_SKELETON - 1, -1):
                if squashed.endswith(form[:n]):
                    return text[:self._origin(runs, starts, len(squashed) - n)] + f"[redacted:{name}]"
        return text

    def redact_bytes(self, data: bytes) -> bytes:
        text = data.decode("utf-8", errors="surrogateescape")
        return self.redact(text).encode("utf-8", errors="surrogateescape")

    def result(self, result):
        """An ExecResult with its streams redacted; a stream cut at the output cap may end inside a
        secret, so its tail is checked too."""
        if not self:
            return result
        return dataclasses.replace(result, stdout=self.redact(result.stdout, cut=result.truncated),
                                   stderr=self.redact(result.stderr, cut=result.truncated),
                                   error=self.redact(result.error))

    def completion(self, completion):
        """A model's completion with its text redacted. Its token ids would spell the secret out
        again, so a completion that carried one keeps no token ids or log-probs (a learner
        skips it) and says so."""
        redacted = self.redact(completion.text) if self else completion.text
        if redacted == completion.text:
            return completion
        return dataclasses.replace(completion, text=redacted, token_ids=[], logprobs=[],
                                   output_tokens=completion.completion_tokens, redacted=True)

    def found(self, text: str) -> bool:
        return bool(text) and self.redact(text) != text


def redactor_for(cfg, environ: dict[str, str] | None = None) -> Redactor:
    return Redactor(configured_secrets(cfg, environ))

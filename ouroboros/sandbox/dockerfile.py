"""Checking a model-written Dockerfile before it reaches the engine.

`docker build --network none` keeps the build's RUN steps off the network, but the engine
itself still fetches for a build: `FROM` pulls a missing image from a registry, and `ADD <url>`
or `ADD <git repo>` downloads on the daemon's network. Those are refused here, with a reason
the model can act on. The Dockerfile is only ever passed to the engine as a file in the build
context; no part of it is put into a command line.
"""
from __future__ import annotations

import re

MAX_BYTES = 64 * 1024
_DIRECTIVE = re.compile(r"^#\s*(\w+)\s*=\s*(\S+)\s*$")
_REMOTE = re.compile(r"^[a-z][a-z0-9+.-]*://|^git@|\.git(#.*)?$", re.IGNORECASE)


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, instruction text) with comments dropped and continuations joined."""
    escape = "\\"
    lines = text.splitlines()
    for line in lines:  # parser directives sit at the very top
        match = _DIRECTIVE.match(line.strip())
        if not match:
            break
        if match.group(1).lower() == "escape" and match.group(2) in ("\\", "`"):
            escape = match.group(2)
    out: list[tuple[int, str]] = []
    current, start = "", 0
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # comments inside a continued instruction are dropped by docker too
        if not current:
            start = number
        if stripped.endswith(escape):
            piece = raw if current else raw.lstrip()
            current += re.sub(re.escape(escape) + r"[ \t]*$", "", piece)
            continue
        if current:
            stripped = raw.rstrip()
        out.append((start, current + stripped))
        current = ""
    if current.strip():
        out.append((start, current.strip()))
    return out


def _flags(args: list[str]) -> tuple[dict[str, str], list[str]]:
    flags: dict[str, str] = {}
    rest = list(args)
    while rest and rest[0].startswith("--"):
        key, _, value = rest.pop(0)[2:].partition("=")
        flags[key.lower()] = value
    return flags, rest


# Instructions a model may use. VOLUME would put an uncapped volume on the host's disk at run
# time, HEALTHCHECK runs commands as the image's user outside our execs, and ONBUILD hides
# instructions from this check; anything unknown is refused rather than guessed at.
KEYWORDS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "WORKDIR", "USER",
            "ARG", "SHELL", "STOPSIGNAL", "MAINTAINER"}
# Only these characters: then Python's and Docker's ideas of whitespace, line breaks and
# directives agree (a tab, \v, \f, \r, a BOM or a no-break space could otherwise split or
# join an instruction differently for the checker than for the engine).
_BAD_CHAR = re.compile(r"[^\x20-\x7e\n\t]")


def check(text: str, allowed_images: set[str]) -> list[str]:
    """Problems that make the Dockerfile unsafe or unbuildable here; empty when it may build."""
    if len(text.encode("utf-8", errors="replace")) > MAX_BYTES:
        return [f"the Dockerfile is over {MAX_BYTES} bytes"]
    bad = _BAD_CHAR.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        return [f"line {line}: character U+{ord(bad.group()):04X} is not allowed; a Dockerfile here may contain "
                f"only printable ASCII, tabs and newlines"]
    problems: list[str] = []
    stages: set[str] = set()
    saw_from = False
    for number, line in logical_lines(text):
        problems += _check_instruction(number, line, allowed_images, stages, saw_from)
        if line.replace("\t", " ").split(None, 1)[0].upper() == "FROM":
            saw_from = True
    if not saw_from:
        problems.append("the Dockerfile has no FROM line; start it with `FROM " + sorted(allowed_images)[0] + "`")
    return problems


def _check_instruction(number: int, line: str, allowed: set[str], stages: set[str], saw_from: bool) -> list[str]:
    word, _, rest = line.replace("\t", " ").partition(" ")
    keyword = word.upper()
    args = rest.split()
    where = f"line {number} ({keyword})"
    if keyword not in KEYWORDS:
        return [f"{where}: instruction {word!r} is not allowed here; use {', '.join(sorted(KEYWORDS))}"]
    if keyword == "ONBUILD":
        return _check_instruction(number, rest.strip(), allowed, stages, saw_from) if rest.strip() else []
    if keyword == "FROM":
        flags, rest_args = _flags(args)
        if not rest_args:
            return [f"{where}: FROM names no image"]
        image = rest_args[0]
        known = image.lower() in stages or image == "scratch" or image in allowed
        if len(rest_args) >= 3 and rest_args[1].upper() == "AS":
            stages.add(rest_args[2].lower())
        if known:
            return []
        return [f"{where}: image {image!r} is not available here (no registry can be reached); "
                f"build on one of: {', '.join(sorted(allowed))}"]
    if keyword in ("ADD", "COPY"):
        flags, sources = _flags(args)
        problems = []
        source_stage = flags.get("from")
        if source_stage is not None and source_stage.lower() not in stages and source_stage not in allowed \
                and not source_stage.isdigit():
            problems.append(f"{where}: --from={source_stage!r} is neither an earlier stage nor an available image")
        text = " ".join(sources)
        if text.startswith("["):
            try:
                import json
                sources = [str(x) for x in json.loads(text)]
            except ValueError:
                pass
        for source in sources[:-1]:
            plain = re.sub(r"[\\\"']", "", source)
            if _REMOTE.search(plain.strip("[],")) or "://" in plain or (keyword == "ADD" and "$" in plain):
                problems.append(f"{where}: {source!r} is fetched from the network by the engine, which "
                                f"builds may not reach; put the file in the build context instead")
        return problems
    if keyword == "RUN":
        flags, _ = _flags(args)
        bad = sorted(key for key in flags if key in ("network", "security", "mount", "device"))
        if bad:
            return [f"{where}: RUN --{', --'.join(bad)} is not allowed; builds run without network or extra mounts"]
    return []

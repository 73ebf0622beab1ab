"""Research actions (seed 000): `web_search` behind a provider interface, and `load_url`.

Both are off unless the config turns them on. `load_url` is the dangerous one: a model-chosen
URL fetched from the harness's host could reach loopback services (Ray's dashboard), private
networks or a cloud metadata endpoint. So it:
- allows only http and https;
- resolves the host and refuses loopback, private, link-local, CGNAT, multicast, reserved and
  unspecified addresses (IPv4-mapped forms included) unless the host is allowlisted;
- connects to the address it checked (no second DNS lookup that could be rebound), and checks
  the connected peer again;
- follows at most five redirects itself, checking each hop the same way;
- bounds the time and the bytes read, and turns HTML into text.
Errors are `ResearchError`s whose message the model sees; API keys never appear in them.
"""
from __future__ import annotations

import abc
import html
import http.client
import ipaddress
import json
import os
import re
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from html.parser import HTMLParser

USER_AGENT = "ouroboros-research/1"
MAX_REDIRECTS = 5
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class ResearchError(Exception):
    pass


@dataclass
class SearchHit:
    title: str
    url: str
    snippet: str


@dataclass
class PageText:
    url: str
    status: int
    content_type: str
    text: str
    truncated: bool


# ----------------------------------------------------------------------------- web search


class SearchProvider(abc.ABC):
    @abc.abstractmethod
    def search(self, query: str, max_results: int) -> list[SearchHit]:
        ...


class GoogleSearch(SearchProvider):
    """The Google Custom Search JSON API."""

    def __init__(self, api_key: str, engine_id: str, endpoint: str = "https://www.googleapis.com/customsearch/v1",
                 timeout_s: float = 10.0) -> None:
        self.api_key, self.engine_id, self.endpoint, self.timeout_s = api_key, engine_id, endpoint, timeout_s

    def search(self, query: str, max_results: int) -> list[SearchHit]:
        import urllib.error
        import urllib.request

        params = {"key": self.api_key, "cx": self.engine_id, "q": query[:2000], "num": max(1, min(10, max_results))}
        request = urllib.request.Request(f"{self.endpoint}?{urllib.parse.urlencode(params)}",
                                         headers={"User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = response.read(4_000_000)
        except urllib.error.HTTPError as exc:
            reason = {403: "the API key is refused or the daily quota is spent",
                      429: "rate limited; try again later"}.get(exc.code, "the provider failed")
            raise ResearchError(f"web search returned HTTP {exc.code}: {reason}") from None
        except (urllib.error.URLError, OSError) as exc:  # the URL (and its key) stays out of the message
            raise ResearchError(f"web search request failed: {type(exc).__name__}") from None
        try:
            items = json.loads(payload).get("items") or []
        except (ValueError, AttributeError):
            raise ResearchError("web search returned a reply that is not a JSON object") from None
        return [SearchHit(str(i.get("title", "")), str(i.get("link", "")), str(i.get("snippet", "")))
                for i in items[:max_results] if isinstance(i, dict)]


def make_search_provider(kind: str, api_key_env: str, engine_id_env: str, endpoint: str | None = None) -> SearchProvider:
    if kind != "google":
        raise ResearchError(f"unknown web search provider {kind!r}; expected 'google'")
    key, engine = os.environ.get(api_key_env, ""), os.environ.get(engine_id_env, "")
    missing = [name for name, value in ((api_key_env, key), (engine_id_env, engine)) if not value]
    if missing:
        raise ResearchError(f"web_search needs the environment variable(s) {', '.join(missing)} "
                            f"(a Google Custom Search API key and engine id)")
    return GoogleSearch(key, engine, endpoint or "https://www.googleapis.com/customsearch/v1")


# ----------------------------------------------------------------------------- load_url


def _forbidden(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip in _METADATA or ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast
            or ip.is_reserved or ip.is_unspecified or (ip.version == 4 and ip in _CGNAT)
            or not ip.is_global)


def _allowed(host: str, port: int, allow_hosts) -> bool:
    host = host.lower().strip("[]")
    return any(entry.lower().strip("[]") in (host, f"{host}:{port}") for entry in allow_hosts)


def _resolve(host: str, port: int, allow_hosts) -> str:
    """The address to connect to: the first one, after every resolved address passed the check."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ResearchError(f"cannot resolve {host!r}: {exc.strerror}") from None
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise ResearchError(f"{host!r} has no address")
    if not _allowed(host, port, allow_hosts):
        bad = [a for a in addresses if _forbidden(a)]
        if bad:
            raise ResearchError(f"refusing {host!r}: it resolves to a non-public address ({bad[0]}); "
                                f"only public hosts may be loaded unless experiment.research.allow_hosts lists it")
    return addresses[0]


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host, port, address, allow, timeout):
        super().__init__(host, port, timeout=timeout)
        self._address, self._allow = address, allow

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        _check_peer(self.sock, self.host, self.port, self._allow)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host, port, address, allow, timeout):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address, self._allow = address, allow

    def connect(self):
        raw = socket.create_connection((self._address, self.port), self.timeout)
        _check_peer(raw, self.host, self.port, self._allow)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)  # SNI and cert for the name


def _check_peer(sock, host, port, allow):
    peer = sock.getpeername()[0]
    if not _allowed(host, port, allow) and _forbidden(peer):
        sock.close()
        raise ResearchError(f"refusing {host!r}: connected to a non-public address")


class _TextExtractor(HTMLParser):
    SKIP = {"script", "style", "noscript", "template", "svg"}
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "pre",
             "title", "ul", "ol", "table", "header", "footer"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.skipping:
            self.skipping -= 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _TextExtractor()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # malformed markup: fall back to stripping tags
        return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", markup))).strip()
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in "".join(parser.parts).split("\n"))
    return "\n".join(line for line in lines if line)


def load_url(url: str, *, allow_hosts=(), timeout_s: float = 10.0, max_bytes: int = 2_000_000,
             max_chars: int = 20_000) -> PageText:
    deadline = time.monotonic() + timeout_s
    current = url.strip()
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(current)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ResearchError(f"only http(s) URLs can be loaded, got {current[:200]!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ResearchError(f"bad port in {current[:200]!r}") from None
        address = _resolve(parts.hostname, port, allow_hosts)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ResearchError(f"loading {url[:200]!r} took longer than {timeout_s:g} s")
        cls = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
        conn = cls(parts.hostname, port, address, allow_hosts, remaining)
        path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        try:
            conn.request("GET", path, headers={"User-Agent": USER_AGENT, "Accept": "text/html, text/plain, */*"})
            response = conn.getresponse()
            if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
                current = urllib.parse.urljoin(current, response.getheader("Location"))
                conn.close()
                continue
            ctype = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
            chunks, size, truncated = [], 0, False
            while True:
                if time.monotonic() > deadline:
                    raise ResearchError(f"loading {url[:200]!r} took longer than {timeout_s:g} s")
                chunk = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size >= max_bytes:
                    truncated = True
                    break
        except (OSError, http.client.HTTPException) as exc:
            raise ResearchError(f"loading {url[:200]!r} failed: {type(exc).__name__}: {exc}"[:300]) from None
        finally:
            conn.close()
        body = b"".join(chunks)[:max_bytes]
        if ctype and not (ctype.startswith("text/") or ctype in ("application/json", "application/xhtml+xml",
                                                                   "application/xml")):
            raise ResearchError(f"unsupported content type {ctype!r}: only text pages can be loaded")
        text = body.decode(response.headers.get_content_charset() or "utf-8", errors="replace")
        if ctype in ("text/html", "application/xhtml+xml") or (not ctype and "<html" in text[:2000].lower()):
            text = html_to_text(text)
        if len(text) > max_chars:
            text, truncated = text[:max_chars], True
        return PageText(current, response.status, ctype or "unknown", text, truncated)
    raise ResearchError(f"more than {MAX_REDIRECTS} redirects from {url[:200]!r}")

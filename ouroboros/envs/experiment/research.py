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
import threading
import time
import urllib.parse
from dataclasses import dataclass
from html.parser import HTMLParser

USER_AGENT = "ouroboros-research/1"
MAX_REDIRECTS = 5
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
# NAT64 prefixes embed an IPv4 address that a NAT64 gateway would reach for us; newer Pythons call
# 64:ff9b::/96 global, so the embedded address is checked explicitly (6to4 likewise, via .sixtofour).
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class ResearchError(Exception):
    """What went wrong and what to do; the caller hands the message to the model as the action's result."""


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
    ip = ipaddress.ip_address(address.split("%")[0])  # drop an IPv6 zone id ("fe80::1%eth0")
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv4 addresses wrapped in IPv6 (mapped ::ffff:a.b.c.d, 6to4, NAT64) reach the IPv4 address:
        # judge that one. IPv4-compatible ::a.b.c.d lies in ::/8, which is_reserved already refuses.
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None and _forbidden(str(ip.sixtofour)):
            return True
        elif ip in _NAT64 and _forbidden(str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))):
            return True
    return (ip in _METADATA or ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast
            or ip.is_reserved or ip.is_unspecified or (ip.version == 4 and ip in _CGNAT)
            or not ip.is_global)


def _allowed(host: str, port: int, allow_hosts) -> bool:
    """True when `host` (as urlsplit gives it: lowercase, IPv6 without brackets) or host:port is listed.

    Entries may be "name", "name:port", "1.2.3.4", "[::1]", "[::1]:8080" or a bare "::1"."""
    host = host.lower()
    for entry in allow_hosts:
        entry = str(entry).strip().lower()
        if entry.startswith("["):  # [v6] or [v6]:port
            name, _, rest = entry[1:].partition("]")
            if name == host and rest in ("", f":{port}"):
                return True
        elif entry == host or entry == f"{host}:{port}":
            return True
    return False


def _resolve(host: str, port: int, allow_hosts) -> str:
    """The address to connect to: the first one, after every resolved address passed the check."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ResearchError(f"cannot resolve {host!r}: {exc.strerror}; check the URL") from None
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


def _abort(conn, fired: threading.Event) -> None:
    """Deadline watchdog: shut the socket down so a blocked read returns, however slowly a server drips.

    socket.socket.shutdown (not SSLSocket's override) acts on the fd and leaves TLS state alone."""
    fired.set()
    sock = conn.sock
    if sock is not None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass


def _check_peer(sock, host, port, allow):
    peer = sock.getpeername()[0]
    if not _allowed(host, port, allow) and _forbidden(peer):
        sock.close()
        raise ResearchError(f"refusing {host!r}: connected to a non-public address")


_TEXT_TYPES = ("application/json", "application/xhtml+xml", "application/xml")


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
    """GET `url` as text (see the module docstring for the checks); ResearchError on any refusal or failure.

    `allow_hosts` entries ("name", "name:port", "1.2.3.4", "[::1]:8080") skip the address check for
    that host only; every redirect hop is checked again on its own."""
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
            raise ResearchError(f"loading {url[:200]!r} took longer than {timeout_s:g} s; try another source")
        cls = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
        conn = cls(parts.hostname, port, address, allow_hosts, remaining)
        path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        # Socket timeouts bound each wait; the watchdog bounds the sum (a byte every few seconds
        # would otherwise keep resetting them).
        fired = threading.Event()
        watchdog = threading.Timer(remaining, _abort, (conn, fired))
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.request("GET", path, headers={"User-Agent": USER_AGENT, "Accept": "text/html, text/plain, */*"})
            response = conn.getresponse()
            if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
                current = urllib.parse.urljoin(current, response.getheader("Location"))
                conn.close()
                continue
            ctype = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
            # Refuse binary types before reading a byte of the body.
            if ctype and not (ctype.startswith("text/") or ctype in _TEXT_TYPES):
                raise ResearchError(f"unsupported content type {ctype!r} at {current[:200]!r}: "
                                    f"only text pages (HTML, plain text, JSON, XML) can be loaded")
            chunks, size, truncated = [], 0, False
            while True:
                if fired.is_set() or time.monotonic() > deadline:
                    raise ResearchError(f"loading {url[:200]!r} took longer than {timeout_s:g} s; "
                                        f"try another source")
                chunk = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size >= max_bytes:
                    truncated = True
                    break
        except (OSError, http.client.HTTPException) as exc:
            if fired.is_set():  # the watchdog's shutdown surfaces as a reset or a short read
                raise ResearchError(f"loading {url[:200]!r} took longer than {timeout_s:g} s; "
                                    f"try another source") from None
            raise ResearchError(f"loading {url[:200]!r} failed: {type(exc).__name__}: {exc}"[:300]) from None
        finally:
            watchdog.cancel()
            conn.close()
        if fired.is_set():  # shut down mid-body: EOF looked like the end of the page, but it was not
            raise ResearchError(f"loading {url[:200]!r} took longer than {timeout_s:g} s; try another source")
        body = b"".join(chunks)[:max_bytes]
        try:  # an unknown or bogus charset label falls back to UTF-8
            text = body.decode(response.headers.get_content_charset() or "utf-8", errors="replace")
        except LookupError:
            text = body.decode("utf-8", errors="replace")
        if ctype in ("text/html", "application/xhtml+xml") or (not ctype and "<html" in text[:2000].lower()):
            text = html_to_text(text)
        if len(text) > max_chars:
            text, truncated = text[:max_chars], True
        return PageText(current, response.status, ctype or "unknown", text, truncated)
    raise ResearchError(f"more than {MAX_REDIRECTS} redirects from {url[:200]!r}")

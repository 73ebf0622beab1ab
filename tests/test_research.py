"""web_search and load_url against HTTP servers on 127.0.0.1 that the tests start."""
from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ouroboros.envs.experiment import research
from ouroboros.envs.experiment.research import (GoogleSearch, ResearchError, load_url,
                                                make_search_provider)

KEY = "AIza-test-key-0123456789"


class Server:
    def __init__(self, routes):
        self.routes, self.hits, self.headers = routes, [], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.hits.append(self.path)
                outer.headers.append(dict(self.headers))
                status, headers, body = outer.routes(self.path)
                if status is None:  # the route writes the raw response itself
                    body(self.wfile)
                    return
                if callable(body):
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    body(self.wfile)
                    return
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Quiet(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # clients that hang up early are expected here
                pass

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.port = self.httpd.server_address[1]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve(loopback_only):
    made = []

    def make(routes):
        made.append(Server(routes))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_google_search_against_a_loopback_endpoint(serve):
    def routes(path):
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        if q.get("key") != [KEY]:
            return 403, {}, b'{"error": {"message": "bad key"}}'
        assert q["cx"] == ["engine-1"] and q["num"] == ["3"]
        items = [{"title": f"t{i}", "link": f"https://example.org/{i}", "snippet": q["q"][0]} for i in range(5)]
        return 200, {"Content-Type": "application/json"}, json.dumps({"items": items}).encode()

    server = serve(routes)
    endpoint = f"http://127.0.0.1:{server.port}/customsearch/v1"
    hits = GoogleSearch(KEY, "engine-1", endpoint).search("sum of squares", 3)
    assert [h.title for h in hits] == ["t0", "t1", "t2"] and hits[0].snippet == "sum of squares"
    with pytest.raises(ResearchError) as info:
        GoogleSearch("wrong-key-xyz", "engine-1", endpoint).search("q", 3)
    assert "403" in str(info.value) and "wrong-key" not in str(info.value)


@pytest.mark.parametrize("status", [429, 500])
def test_search_errors_never_show_the_key(serve, status):
    server = serve(lambda path: (status, {}, b"{}"))
    with pytest.raises(ResearchError) as info:
        GoogleSearch(KEY, "e", f"http://127.0.0.1:{server.port}/").search("q", 3)
    assert str(status) in str(info.value) and KEY not in str(info.value)


def test_search_provider_names_missing_variables(monkeypatch):
    monkeypatch.delenv("G_KEY_X", raising=False)
    monkeypatch.delenv("G_CSE_X", raising=False)
    with pytest.raises(ResearchError, match="G_KEY_X.*G_CSE_X"):
        make_search_provider("google", "G_KEY_X", "G_CSE_X")


PAGE = (b"<html><head><title>Squares</title><script>steal()</script><style>p{}</style></head>"
        b"<body><h1>Sum of squares</h1><p>n(n+1)(2n+1)/6 &amp; more</p></body></html>")


def test_loopback_is_refused_unless_allowlisted(serve):
    server = serve(lambda path: (200, {"Content-Type": "text/html; charset=utf-8"}, PAGE))
    url = f"http://127.0.0.1:{server.port}/page"
    with pytest.raises(ResearchError, match="non-public"):
        load_url(url)
    assert server.hits == []
    page = load_url(url, allow_hosts=[f"127.0.0.1:{server.port}"])
    assert page.status == 200 and "Sum of squares" in page.text and "n(n+1)(2n+1)/6 & more" in page.text
    assert "steal" not in page.text and "p{}" not in page.text
    with pytest.raises(ResearchError, match="non-public"):  # a name that resolves to loopback
        load_url(f"http://localhost:{server.port}/page")
    assert len(server.hits) == 1
    # Plain requests: our User-Agent, the URL's host, and no credentials even when the URL carries some.
    load_url(f"http://user:pw@127.0.0.1:{server.port}/", allow_hosts=["127.0.0.1"])
    sent = {k.lower(): v for k, v in server.headers[-1].items()}
    assert sent["user-agent"] == "ouroboros-research/1" and sent["host"] == f"127.0.0.1:{server.port}"
    assert not {"authorization", "cookie", "proxy-authorization"} & sent.keys()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "http://0x7f000001/", "http://2130706433/",
                                 "http://127.1/", "http://0.0.0.0/", "http://[::ffff:127.0.0.1]/", "http://[::127.0.0.1]/",
                                 "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",
                                 "http://100.64.0.1/", "http://[2002:7f00:1::]/", "http://[64:ff9b::a00:1]/",
                                 "http://[::1]/", "http://10.0.0.1/", "gopher://x/"])
def test_non_public_and_non_http_targets_are_refused(url, loopback_only):
    # Refused by the check itself (not by a failed connection): loopback_only fails any outside connect.
    with pytest.raises(ResearchError, match="non-public|only http"):
        load_url(url, timeout_s=2)


def test_allow_hosts_forms():
    allowed = research._allowed
    assert allowed("127.0.0.1", 8080, ["127.0.0.1"]) and allowed("127.0.0.1", 8080, ["127.0.0.1:8080"])
    assert not allowed("127.0.0.1", 8080, ["127.0.0.1:9090"]) and not allowed("127.0.0.2", 80, ["127.0.0.1"])
    assert allowed("::1", 8080, ["[::1]:8080"]) and allowed("::1", 8080, ["[::1]"]) and allowed("::1", 8080, ["::1"])
    assert allowed("docs.example.org", 443, ["Docs.Example.org"]) and not allowed("example.org", 443, ["docs.example.org"])


def test_the_checked_address_is_pinned_and_the_peer_rechecked(serve, monkeypatch):
    server = serve(lambda path: (200, {"Content-Type": "text/plain"}, b"pinned"))
    real, calls = socket.getaddrinfo, []

    def one_answer(host, *args, **kwargs):  # a rebinding resolver: a second lookup would fail the test
        if host != "pinned.test":
            return real(host, *args, **kwargs)
        calls.append(host)
        assert len(calls) == 1, "load_url resolved the host a second time instead of using the checked address"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", args[0]))]

    monkeypatch.setattr(socket, "getaddrinfo", one_answer)
    page = load_url(f"http://pinned.test:{server.port}/", allow_hosts=["pinned.test"])
    assert page.text == "pinned" and server.headers[-1]["Host"] == f"pinned.test:{server.port}"
    # A check that passed (here: forced) but a connection that lands on a non-public peer is dropped
    # before any request is sent.
    monkeypatch.setattr(research, "_resolve", lambda host, port, allow: "127.0.0.1")
    with pytest.raises(ResearchError, match="non-public"):
        load_url(f"http://public.test:{server.port}/")
    assert len(server.hits) == 1


def test_redirect_to_a_non_allowlisted_host_is_refused_before_connecting(serve):
    target = serve(lambda path: (200, {"Content-Type": "text/plain"}, b"secret"))
    # localhost:PORT would reach `target` (it listens on 127.0.0.1) if the hop were not checked.
    hop = serve(lambda path: (302, {"Location": f"http://localhost:{target.port}/"}, b""))
    meta = serve(lambda path: (302, {"Location": "http://169.254.169.254/latest/"}, b""))
    with pytest.raises(ResearchError, match="non-public"):
        load_url(f"http://127.0.0.1:{hop.port}/", allow_hosts=[f"127.0.0.1:{hop.port}"])
    with pytest.raises(ResearchError, match="non-public"):
        load_url(f"http://127.0.0.1:{meta.port}/", allow_hosts=[f"127.0.0.1:{meta.port}"])
    assert target.hits == [] and hop.hits == ["/"] and meta.hits == ["/"]


def test_redirects_are_followed_and_capped(serve):
    final = serve(lambda path: (200, {"Content-Type": "text/plain"}, b"arrived"))
    hop = serve(lambda path: (301, {"Location": f"http://127.0.0.1:{final.port}/end"}, b""))
    page = load_url(f"http://127.0.0.1:{hop.port}/start", allow_hosts=["127.0.0.1"])
    assert page.text == "arrived" and page.url == f"http://127.0.0.1:{final.port}/end"
    loop = serve(lambda path: (302, {"Location": "/again"}, b""))
    with pytest.raises(ResearchError, match="more than 5 redirects"):
        load_url(f"http://127.0.0.1:{loop.port}/", allow_hosts=["127.0.0.1"])
    assert len(loop.hits) == 6


def test_size_cap_timeout_and_binary(serve):
    big = serve(lambda path: (200, {"Content-Type": "text/plain"}, b"x" * 500_000))
    page = load_url(f"http://127.0.0.1:{big.port}/", allow_hosts=["127.0.0.1"], max_bytes=100_000, max_chars=50_000)
    assert page.truncated and len(page.text) == 50_000
    page = load_url(f"http://127.0.0.1:{big.port}/", allow_hosts=["127.0.0.1"], max_bytes=100_000, max_chars=10**6)
    assert page.truncated and len(page.text) == 100_000
    odd = serve(lambda path: (200, {"Content-Type": "text/plain; charset=no-such-charset"}, "héllo".encode()))
    assert load_url(f"http://127.0.0.1:{odd.port}/", allow_hosts=["127.0.0.1"]).text == "héllo"

    def stall(wfile):
        wfile.write(b"start")
        wfile.flush()
        time.sleep(5)

    slow = serve(lambda path: (200, {"Content-Type": "text/plain"}, stall))
    started = time.monotonic()
    with pytest.raises(ResearchError):
        load_url(f"http://127.0.0.1:{slow.port}/", allow_hosts=["127.0.0.1"], timeout_s=1.0)
    assert time.monotonic() - started < 4

    def drip(wfile):  # a header byte every 0.3 s: each socket wait is short, the whole fetch is not
        wfile.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nX-Slow: ")
        for _ in range(20):
            wfile.write(b"a")
            wfile.flush()
            time.sleep(0.3)

    dripping = serve(lambda path: (None, {}, drip))
    started = time.monotonic()
    with pytest.raises(ResearchError, match="longer than"):
        load_url(f"http://127.0.0.1:{dripping.port}/", allow_hosts=["127.0.0.1"], timeout_s=1.0)
    assert time.monotonic() - started < 2
    binary = serve(lambda path: (200, {"Content-Type": "application/octet-stream"}, b"\x00\x01"))
    with pytest.raises(ResearchError, match="content type"):
        load_url(f"http://127.0.0.1:{binary.port}/", allow_hosts=["127.0.0.1"])

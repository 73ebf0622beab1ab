"""web_search and load_url against HTTP servers on 127.0.0.1 that the tests start."""
from __future__ import annotations

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ouroboros.envs.experiment.research import (GoogleSearch, ResearchError, load_url,
                                                make_search_provider)

KEY = "AIza-test-key-0123456789"


class Server:
    def __init__(self, routes):
        self.routes, self.hits = routes, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.hits.append(self.path)
                status, headers, body = outer.routes(self.path)
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

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
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
    with pytest.raises(ResearchError):
        load_url(f"http://localhost:{server.port}/page")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "http://0x7f000001/", "http://2130706433/",
                                 "http://[::ffff:127.0.0.1]/", "http://169.254.169.254/latest/meta-data/",
                                 "http://[::1]/", "http://10.0.0.1/", "gopher://x/"])
def test_non_public_and_non_http_targets_are_refused(url, loopback_only):
    with pytest.raises(ResearchError):
        load_url(url, timeout_s=2)


def test_redirect_to_a_non_allowlisted_host_is_refused_before_connecting(serve):
    target = serve(lambda path: (200, {"Content-Type": "text/plain"}, b"secret"))
    hop = serve(lambda path: (302, {"Location": f"http://127.0.0.2:{target.port}/"}, b""))
    meta = serve(lambda path: (302, {"Location": "http://169.254.169.254/latest/"}, b""))
    with pytest.raises(ResearchError, match="non-public"):
        load_url(f"http://127.0.0.1:{hop.port}/", allow_hosts=[f"127.0.0.1:{hop.port}"])
    with pytest.raises(ResearchError, match="non-public"):
        load_url(f"http://127.0.0.1:{meta.port}/", allow_hosts=[f"127.0.0.1:{meta.port}"])
    assert target.hits == []


def test_size_cap_timeout_and_binary(serve):
    big = serve(lambda path: (200, {"Content-Type": "text/plain"}, b"x" * 500_000))
    page = load_url(f"http://127.0.0.1:{big.port}/", allow_hosts=["127.0.0.1"], max_bytes=100_000, max_chars=50_000)
    assert page.truncated and len(page.text) == 50_000

    def stall(wfile):
        wfile.write(b"start")
        wfile.flush()
        time.sleep(5)

    slow = serve(lambda path: (200, {"Content-Type": "text/plain"}, stall))
    started = time.monotonic()
    with pytest.raises(ResearchError):
        load_url(f"http://127.0.0.1:{slow.port}/", allow_hosts=["127.0.0.1"], timeout_s=1.0)
    assert time.monotonic() - started < 4
    binary = serve(lambda path: (200, {"Content-Type": "application/octet-stream"}, b"\x00\x01"))
    with pytest.raises(ResearchError, match="content type"):
        load_url(f"http://127.0.0.1:{binary.port}/", allow_hosts=["127.0.0.1"])

"""`ouroboros view`: a local web app over run directories (their SQLite, summary.json and human
inbox; no database server of its own).

Pages: the runs; a run (config, rounds, learning curves, versions, live while it goes); its
completions (paged, filtered by text, version, phase and reward); one completion (prompt, reply,
the version that made it and the learner step that consumed it, every judge's verdict, a
survival episode's steps with their method edits); one prompt across versions side by side;
experiments and their span trees (opened level by level); the rating queue, whose ratings go to
the run's human inbox (store/human_inbox.py), which a running alignment loop reads; the console,
where a person answers in the model's place (the `human` backend, backends/human.py).

Everything a model or a sandbox wrote is hostile: templates escape it all (Jinja2 autoescape),
scripts come only from the app's own files (a Content-Security-Policy forbids inline ones), and
long texts are cut at `MAX_SHOWN` characters. Every request carries the server's token (printed
with its address; a cookie after the first `?token=` visit), even on loopback: a sandboxed program
with network, or any local process, must not read runs or forge the human ratings that become
training pairs. Host names other than loopback and the bound address are refused (DNS
rebinding). Bound to loopback by default. Every form carries a CSRF token tied to this server and
the session cookie.
"""
from __future__ import annotations

import hmac
import json
import math
import secrets
import time
from hashlib import sha256
from pathlib import Path
from urllib.parse import quote

from ouroboros.view.runstore import PAGE, NotFound, RunDir, RunDirError

MAX_SHOWN = 200_000
MAX_BODY = 1_000_000
HERE = Path(__file__).parent
COOKIE = "ouroboros_token"


def _clip(text) -> str:
    text = "" if text is None else (text if isinstance(text, str) else json.dumps(text, indent=1, ensure_ascii=False))
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + f"\n… cut here: {len(text)} characters in all"


def _when(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if isinstance(ts, (int, float)) else ""


def _int(value, default=None):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _float(value):
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


class Viewer:
    """The app's state: the run directories it serves and its secrets."""

    def __init__(self, run_dirs: list[str | Path], token: str | None = None) -> None:
        self.dirs = [Path(d).expanduser() for d in run_dirs]
        self.token = token
        self.secret = secrets.token_bytes(32)

    def open(self, d: int) -> RunDir:
        if not 0 <= d < len(self.dirs):
            raise NotFound(f"no run directory {d}")
        return RunDir(self.dirs[d])

    def csrf(self, session: str) -> str:
        return hmac.new(self.secret, b"csrf\0" + session.encode(), sha256).hexdigest()


def _finite(value):
    """`value` with NaN and infinities as None (a diverged loss must not break the live page's JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _token_text(text: str) -> str:
    """A token's text made visible: whitespace and control characters as escapes (a token of
    one space or a newline would otherwise print as nothing), clipped to a short piece."""
    shown = "".join(ch if ch.isprintable() and ch != " " else ("·" if ch == " " else repr(ch)[1:-1]) for ch in text)
    return shown[:40]


def _same(given, expected: str) -> bool:
    return hmac.compare_digest(str(given or "").encode(), expected.encode())


def create_app(run_dirs: list[str | Path], token: str, hosts: list[str] | None = None, chat=None):
    """The app over `run_dirs`. Every request must carry `token` (a local process, a sandboxed
    program with network, or a web page that rebinds a name to 127.0.0.1 would otherwise read runs
    and forge human ratings, which become training pairs); `hosts` are the Host names accepted
    (loopback names by default, plus the bound address). `chat`: a ChatDesk (view/chat.py) when
    the dialogue stage is served too, at /chat."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    if not token:
        raise ValueError("the viewer needs a token")
    viewer = Viewer(run_dirs, token)
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
    # `q`: one path segment, with "/" encoded too (an id must not turn a link into another path).
    env.filters.update(clip=_clip, when=_when, q=lambda v: quote(str(v), safe=""), tok=_token_text)

    def session_of(request: Request) -> str:
        return request.cookies.get("ouroboros_session") or ""

    def page(request: Request, template: str, status: int = 200, **ctx) -> HTMLResponse:
        session = session_of(request) or secrets.token_hex(16)
        html = env.get_template(template).render(csrf=viewer.csrf(session), **ctx)
        response = HTMLResponse(html, status_code=status)
        if not session_of(request):
            response.set_cookie("ouroboros_session", session, httponly=True, samesite="strict")
        return response

    def problem(request: Request, status: int, title: str, message: str) -> HTMLResponse:
        return page(request, "problem.html", status=status, title=title, message=message)

    def refused_form(request: Request, form) -> HTMLResponse | None:
        """The form's CSRF token must be this server's for this session, and a browser's Origin (when
        it sends one) must be this server."""
        session = session_of(request)
        if form is None or not session or not _same(form.get("csrf"), viewer.csrf(session)):
            return problem(request, 403, "Forbidden", "the form's CSRF token is missing or wrong: reload the page "
                                                      "and submit again")
        origin = request.headers.get("origin")
        if origin and origin != f"{request.url.scheme}://{request.url.netloc}":
            return problem(request, 403, "Forbidden", f"a form from another site ({origin}) was refused")
        return None

    def with_dir(handler):
        """Opens the run directory and runs the handler in a worker thread (SQLite, Parquet and
        matplotlib block; one slow page must not stall the others or the live poll)."""
        def run(request: Request, form):
            d = _int(request.path_params.get("d"), -1)
            try:
                rd = viewer.open(d)
            except NotFound as exc:
                return problem(request, 404, "Not found", str(exc))
            except RunDirError as exc:
                return problem(request, 200, "This run directory cannot be shown", str(exc))
            try:
                if request.method == "POST":
                    refused = refused_form(request, form)
                    if refused is not None:
                        return refused
                    return handler(request, rd, d, form)
                return handler(request, rd, d)
            except NotFound as exc:
                return problem(request, 404, "Not found", str(exc))
            except RunDirError as exc:
                return problem(request, 200, "This run directory cannot be shown", str(exc))
            finally:
                rd.close()

        async def wrapped(request: Request):
            form = await request.form() if request.method == "POST" else None
            return await run_in_threadpool(run, request, form)
        return wrapped

    def index_sync(request: Request):
        entries = []
        for d, path in enumerate(viewer.dirs):
            try:
                rd = RunDir(path)
            except RunDirError as exc:
                entries.append({"d": d, "path": str(path), "error": str(exc), "runs": []})
                continue
            try:
                entries.append({"d": d, "path": str(rd.path), "error": "", "runs": rd.runs()})
            except RunDirError as exc:
                entries.append({"d": d, "path": str(path), "error": str(exc), "runs": []})
            finally:
                rd.close()
        return page(request, "index.html", entries=entries, chat=chat is not None)

    async def index(request: Request):
        return await run_in_threadpool(index_sync, request)

    @with_dir
    def run_page(request: Request, rd: RunDir, d: int):
        from ouroboros.view import plots

        run_id = request.path_params["run_id"]
        run = rd.run(run_id)
        summary = rd.summary(run_id)
        return page(request, "run.html", d=d, rd=rd, run=run, rounds=rd.rounds(run_id), summary=summary,
                    curves=plots.available(summary), versions=rd.versions(run_id),
                    config=json.dumps(run["config"], indent=1, ensure_ascii=False))

    @with_dir
    def rounds_fragment(request: Request, rd: RunDir, d: int):
        run_id = request.path_params["run_id"]
        rd.run(run_id)
        return page(request, "rounds.html", d=d, run_id=run_id, rounds=rd.rounds(run_id))

    @with_dir
    def live(request: Request, rd: RunDir, d: int):
        run = rd.run(request.path_params["run_id"])
        rounds = rd.rounds(run["id"])
        done = [r for r in rounds if r["status"] == "done"]
        return JSONResponse(_finite({"status": run["status"], "rounds": len(rounds), "done": len(done),
                                     "last": done[-1]["metrics"] if done else {}}))

    @with_dir
    def plot(request: Request, rd: RunDir, d: int):
        from ouroboros.view import plots

        curve = plots.BY_NAME.get(request.path_params["name"])
        if curve is None:
            raise NotFound(f"no curve {request.path_params['name']!r}")
        run_id = request.path_params["run_id"]
        rd.run(run_id)
        return Response(plots.png(rd.summary(run_id), curve), media_type="image/png",
                        headers={"Cache-Control": "no-store"})

    @with_dir
    def completions(request: Request, rd: RunDir, d: int):
        q = request.query_params
        run_id = request.path_params["run_id"]
        rd.run(run_id)
        filters = {"text": q.get("text", "")[:200], "version": _int(q.get("version")), "phase": q.get("phase", ""),
                   "min_reward": _float(q.get("min_reward")), "max_reward": _float(q.get("max_reward")),
                   "task_id": q.get("task_id", "")}
        pg = rd.completions(run_id, offset=max(0, _int(q.get("offset"), 0)), size=PAGE, **filters)
        return page(request, "completions.html", d=d, run_id=run_id, pg=pg, filters=filters, phases=rd.phases(run_id),
                    query={k: v for k, v in q.items() if k != "offset"})

    @with_dir
    def completion(request: Request, rd: RunDir, d: int):
        run_id = request.path_params["run_id"]
        c = rd.completion(run_id, request.path_params["tid"])
        return page(request, "completion.html", d=d, run_id=run_id, c=c)

    @with_dir
    def across_versions(request: Request, rd: RunDir, d: int):
        run_id = request.path_params["run_id"]
        task_id = request.path_params["task_id"]
        rows = rd.across_versions(run_id, task_id)
        if not rows:
            raise NotFound(f"no completions of prompt {task_id!r} in run {run_id!r}")
        return page(request, "versions.html", d=d, run_id=run_id, task_id=task_id, rows=rows)

    @with_dir
    def experiments(request: Request, rd: RunDir, d: int):
        q = request.query_params
        pg = rd.experiments(q.get("run") or None, offset=max(0, _int(q.get("offset"), 0)),
                            status=q.get("status", ""), text=q.get("text", "")[:200])
        return page(request, "experiments.html", d=d, pg=pg, query={k: v for k, v in q.items() if k != "offset"})

    @with_dir
    def experiment(request: Request, rd: RunDir, d: int):
        eid = _int(request.path_params["eid"])
        exp = rd.experiment(eid)
        return page(request, "experiment.html", d=d, e=exp, steps=rd.steps(eid), spans=rd.spans(eid))

    @with_dir
    def experiment_diff(request: Request, rd: RunDir, d: int):
        from ouroboros.store.git_repo import show_commit
        from ouroboros.store.layout import RunPaths

        exp = rd.experiment(_int(request.path_params["eid"]))
        try:
            repo = RunPaths(rd.path, exp["run_id"]).experiments
        except ValueError:  # a run id no run of ours writes: the row is not ours to follow
            raise NotFound(f"experiment {exp['id']} names no run of this directory") from None
        shown = show_commit(repo, exp.get("git_commit") or "")
        if shown is None:
            raise NotFound(f"experiment {exp['id']} has no commit in {repo}")
        return page(request, "diff.html", d=d, e=exp, diff=shown)

    @with_dir
    def spans_fragment(request: Request, rd: RunDir, d: int):
        q = request.query_params
        eid = _int(request.path_params["eid"])
        rd.experiment(eid)
        pg = rd.spans(eid, parent_id=q.get("parent") or None, offset=max(0, _int(q.get("offset"), 0)),
                      text=q.get("text", "")[:200])
        return page(request, "spans.html", d=d, eid=eid, pg=pg, parent=q.get("parent") or "")

    @with_dir
    def span(request: Request, rd: RunDir, d: int):
        s = rd.span(request.path_params["sid"])
        return page(request, "span.html", d=d, s=s)

    def inbox_of(rd: RunDir, run_id: str):
        from ouroboros.store.human_inbox import HumanInbox
        from ouroboros.store.layout import RunPaths

        return HumanInbox(RunPaths(rd.path, run_id).run, run_id)

    def rubric_of(run: dict) -> list[str]:
        return list(((run["config"].get("align") or {}).get("rubric") or {"helpful": "", "honest": "",
                                                                          "persona": ""}).keys())

    def fate_of(run: dict) -> str:
        """What the run will do with a rating made now (the rate page says it before anyone rates)."""
        cfg = run["config"]
        env = cfg.get("env") or {}
        learns = ((env.get("name") == "alignment" or env.get("human_ratings") == "pairs")
                  and (cfg.get("learner") or {}).get("algorithm", "dpo") == "dpo")
        if run["status"] != "running":
            return "finished"
        return "pairs" if learns else "annotations"

    @with_dir
    def rate(request: Request, rd: RunDir, d: int):
        run_id = request.path_params["run_id"]
        run = rd.run(run_id)
        inbox = inbox_of(rd, run_id)
        return page(request, "rate.html", d=d, run_id=run_id, queue=rd.rating_queue(run_id, inbox.rated_pairs()),
                    rubric=rubric_of(run), fate=fate_of(run),
                    alignment=(run["config"].get("env") or {}).get("name") == "alignment",
                    stored=len(inbox.preferences()) + len(inbox.scores()),
                    saved=request.query_params.get("saved", ""))

    @with_dir
    def rate_pair(request: Request, rd: RunDir, d: int, form):
        from ouroboros.store.human_inbox import InboxError

        run_id = request.path_params["run_id"]
        rd.run(run_id)
        a = rd.completion(run_id, str(form.get("a", "")), light=True)
        b = rd.completion(run_id, str(form.get("b", "")), light=True)
        if a["task_id"] != b["task_id"]:
            return problem(request, 400, "Not stored", "the two candidates answer different prompts")
        try:
            inbox_of(rd, run_id).add_preference(a, b, str(form.get("winner", "")), a["prompt"],
                                                notes=str(form.get("notes", "")))
        except InboxError as exc:
            return problem(request, 400, "Not stored", str(exc))
        return RedirectResponse(f"/d/{d}/run/{quote(run_id, safe='')}/rate?saved=pair", status_code=303)

    @with_dir
    def rate_score(request: Request, rd: RunDir, d: int, form):
        from ouroboros.store.human_inbox import InboxError

        run_id = request.path_params["run_id"]
        run = rd.run(run_id)
        c = rd.completion(run_id, str(form.get("tid", "")), light=True)
        rubric = rubric_of(run)
        score = {k: _float(form.get(f"score_{k}")) for k in rubric if form.get(f"score_{k}") not in (None, "")}
        prompt = c["prompt"][-1].get("content", "") if isinstance(c["prompt"], list) and c["prompt"] and \
            isinstance(c["prompt"][-1], dict) else ""
        try:
            inbox_of(rd, run_id).add_score(c, score, rubric, notes=str(form.get("notes", "")),
                                           **_align_ids(rd, run_id, c["trajectory_id"]), prompt=prompt)
        except InboxError as exc:
            return problem(request, 400, "Not stored", str(exc))
        return RedirectResponse(f"/d/{d}/run/{quote(run_id, safe='')}/rate?saved=score", status_code=303)

    @with_dir
    def console(request: Request, rd: RunDir, d: int):
        return page(request, "console.html", d=d, requests=console_asks(rd), saved=request.query_params.get("saved", ""))

    @with_dir
    def console_asks_fragment(request: Request, rd: RunDir, d: int):
        # What the console page polls: the requests waiting now, each with its form.
        return page(request, "console_asks.html", d=d, requests=console_asks(rd))

    @with_dir
    def console_answer(request: Request, rd: RunDir, d: int, form):
        from ouroboros.backends import BackendError
        from ouroboros.backends.human import answer

        key = str(form.get("key", ""))
        for folder in console_dirs(rd):
            try:
                answer(folder, key, str(form.get("text", "")))
                return RedirectResponse(f"/d/{d}/console?saved=1", status_code=303)
            except BackendError:
                continue
        return problem(request, 404, "Not answered", f"no pending request {key!r} (answered already, or timed out)")

    # -- the dialogue stage's web console (only when served with a ChatDesk) ----------------------
    async def chat_page(request: Request):
        q = request.query_params
        return page(request, "chat.html", label=chat.label, turns=chat.turns(session_of(request)),
                    saved=q.get("saved", "")[:200], file=q.get("file", "")[:500])

    async def chat_post(request: Request):
        from ouroboros.view.chat import ChatError

        form = await request.form()
        refused = refused_form(request, form)
        if refused is not None:
            return refused
        key, action = session_of(request), request.path_params["action"]
        try:
            if action == "say":
                await run_in_threadpool(chat.say, key, str(form.get("text", "")))
                return RedirectResponse("/chat#last", status_code=303)
            if action == "save":
                path, dialog_id = await run_in_threadpool(chat.save, key)
                return RedirectResponse(f"/chat?saved={quote(dialog_id)}&file={quote(str(path))}", status_code=303)
            if action == "new":
                chat.discard(key)
                return RedirectResponse("/chat", status_code=303)
        except ChatError as exc:
            return page(request, "chat.html", status=400, label=chat.label, turns=chat.turns(key), error=str(exc),
                        text=str(form.get("text", ""))[:8000])
        return problem(request, 404, "Not found", f"no chat action {action!r}")

    async def not_found(request: Request, exc):
        return problem(request, 404, "Not found", f"nothing at {request.url.path}")

    class Guard(BaseHTTPMiddleware):
        """The token on every request, a cap on what a request may send, and headers that keep a
        hostile text inert even if a page let one through."""

        async def dispatch(self, request: Request, call_next):
            given = request.query_params.get("token") or request.cookies.get(COOKIE) or \
                request.headers.get("x-ouroboros-token", "")
            if not _same(given, viewer.token):
                return Response("403: this viewer needs its token: open the address `ouroboros view` printed",
                                status_code=403, media_type="text/plain")
            if _int(request.headers.get("content-length"), 0) > MAX_BODY:
                return Response("413: the form is too large", status_code=413, media_type="text/plain")
            response = await call_next(request)
            if request.query_params.get("token"):
                response.set_cookie(COOKIE, viewer.token, httponly=True, samesite="strict")
            response.headers["Content-Security-Policy"] = ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                                           "img-src 'self'; object-src 'none'; base-uri 'none'; "
                                                           "form-action 'self'; frame-ancestors 'none'")
            response.headers["X-Content-Type-Options"] = "nosniff"
            # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on the
            # app's own forms, and the Origin check could not tell them from a foreign page's.
            response.headers["Referrer-Policy"] = "same-origin"
            return response

    routes = [
        Route("/", index),
        Route("/d/{d:int}/run/{run_id}", run_page),
        Route("/d/{d:int}/run/{run_id}/rounds", rounds_fragment),
        Route("/d/{d:int}/run/{run_id}/live", live),
        Route("/d/{d:int}/run/{run_id}/plot/{name}.png", plot),
        Route("/d/{d:int}/run/{run_id}/completions", completions),
        Route("/d/{d:int}/run/{run_id}/c/{tid:path}", completion),
        Route("/d/{d:int}/run/{run_id}/prompt/{task_id:path}", across_versions),
        Route("/d/{d:int}/run/{run_id}/rate", rate),
        Route("/d/{d:int}/run/{run_id}/rate/pair", rate_pair, methods=["POST"]),
        Route("/d/{d:int}/run/{run_id}/rate/score", rate_score, methods=["POST"]),
        Route("/d/{d:int}/console", console),
        Route("/d/{d:int}/console/asks", console_asks_fragment),
        Route("/d/{d:int}/console/answer", console_answer, methods=["POST"]),
        Route("/d/{d:int}/experiments", experiments),
        Route("/d/{d:int}/experiment/{eid:int}", experiment),
        Route("/d/{d:int}/experiment/{eid:int}/spans", spans_fragment),
        Route("/d/{d:int}/experiment/{eid:int}/diff", experiment_diff),
        Route("/d/{d:int}/span/{sid:path}", span),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    if chat is not None:
        routes[1:1] = [Route("/chat", chat_page), Route("/chat/{action}", chat_post, methods=["POST"])]
    allowed = list(hosts or []) + ["127.0.0.1", "localhost", "::1", "[::1]"]
    # The Host check refuses a page whose name was rebound to this machine (DNS rebinding).
    app = Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=allowed),
                                               Middleware(Guard)],
                    exception_handlers={404: not_found})
    app.state.viewer = viewer
    return app


def console_asks(rd: RunDir) -> list[dict]:
    """The requests waiting in the consoles of this directory's runs, oldest first."""
    from ouroboros.backends.human import pending

    return sorted((a for folder in console_dirs(rd) for a in pending(folder)), key=lambda a: a.get("asked_at") or 0)


def console_dirs(rd: RunDir) -> list[Path]:
    """Where the runs of this directory ask the console: <dir>/console, and any console_dir their
    configs name."""
    out = [rd.path / "console"]
    for r in rd._rows("SELECT config FROM runs"):
        try:
            named = ((json.loads(r["config"] or "{}").get("generator") or {}).get("human") or {}).get("console_dir")
        except (ValueError, RecursionError, AttributeError):
            continue
        if isinstance(named, str) and named and Path(named) not in out:
            out.append(Path(named))
    return out


def _align_ids(rd: RunDir, run_id: str, trajectory_id: str) -> dict:
    """The dialog and prompt ids the alignment judge joins a human score by (align_scores has them)."""
    if "align_scores" not in rd.tables:
        return {}
    rows = rd._rows("SELECT dialog_id, prompt_id FROM align_scores WHERE run_id=? AND trajectory_id=? LIMIT 1",
                    (run_id, trajectory_id))
    if not rows:
        return {}
    prompt_id = rows[0]["prompt_id"]
    return {"dialog_id": rows[0]["dialog_id"], "prompt_id": None if prompt_id in (None, "None") else prompt_id}


def serve(run_dirs: list[str], host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          chat=None) -> None:
    import uvicorn

    token = token or secrets.token_urlsafe(24)
    app = create_app(run_dirs, token, hosts=[host] if host not in ("0.0.0.0", "::") else None, chat=chat)
    shown = f"http://{host}:{port}/{'chat' if chat is not None else ''}?token={token}"
    print(f"ouroboros view: {shown}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")

"""`ouroboros view` over HTTP: a run directory written by the real Recorder (the loop's one writer,
here without Ray), read by the viewer; pages checked against summary.json and the DB, hostile
replies shown inert, ratings stored in the run's human inbox and taken by the next round."""
from __future__ import annotations

import json
import sqlite3

import pytest

from ouroboros.actors.recorder import Recorder
from ouroboros.config import Config
from ouroboros.envs.alignment.environment import AlignmentEnvironment
from ouroboros.store.human_inbox import HumanInbox
from ouroboros.types import Action, Completion, Request, Score, Step, Trajectory

starlette = pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from ouroboros.view.server import create_app  # noqa: E402

TOKEN = "view-test-token"
HOSTILE = '<script>alert("x")</script><img src=x onerror="alert(1)">' + "A" * 300_000
PROMPT = [{"role": "user", "content": "How long is the bridge?"}]


def traj(tid: str, task: str, text: str, version: int, sample: int, phase: str = "train") -> Trajectory:
    c = Completion(f"req-{tid}", text, [1, 2], [0.0, 0.0], version, "hf")
    # The prompt's ids as a curriculum prompt carries them (the alignment judge joins human scores by them).
    return Trajectory(tid, task, phase, 1, sample, [Step(0, Request(f"req-{tid}", PROMPT), c,
                                                         Action("answer", text, "", True), None, {})],
                      params={"task": {"dialog_id": "engineer-01", "prompt_id": 3}})


def open_client(dirs) -> TestClient:
    app = create_app([str(d) for d in dirs], TOKEN)
    return TestClient(app, base_url="http://127.0.0.1:8765", cookies={"ouroboros_token": TOKEN})


def write_round(rec: Recorder, round_: int, version: int, texts: list[str], published: int) -> None:
    rec.start_round(round_, version)
    ts = [traj(f"r{round_}-t1-s{i}", "t1", text, version, i) for i, text in enumerate(texts)]
    scores = [Score(t.id, {"aggregate": 0.9 - 0.3 * i, "judge_failed": 0.0}, 0.9 - 0.3 * i, "alignment-pool",
                    details=[{"judge": "rules", "rater": "ai", "score": {"facts": 5 - 2 * i}, "notes": ""}])
              for i, t in enumerate(ts)]
    held = [traj(f"r{round_}-h1", "h1", f"held-out answer of v{version}", version, 0, "eval")]
    rec.record(round_, "train", ts, scores, make_pairs=True)
    rec.record(round_, "eval", held, [Score(held[0].id, {"judge_failed": 0.0}, 0.5 + 0.1 * round_, "p")])
    rec.finish_round({"round": round_, "weights_version": published, "heldout_reward_mean": 0.5 + 0.1 * round_,
                      "heldout_reward_ci95": [0.4 + 0.1 * round_, 0.6 + 0.1 * round_], "heldout_samples": 40,
                      "train_reward_mean": 0.6, "loss": 0.69 - 0.05 * round_, "seconds": 12.5})


@pytest.fixture
def run_dir(tmp_path):
    cfg = Config.model_validate({"env": {"name": "alignment"}, "align": {"judges": [{"name": "rules",
                                                                                      "kind": "rules"}]}})
    rec = Recorder(str(tmp_path / "out"), "align-test-1", "align", cfg.model_dump(), env=AlignmentEnvironment(cfg))
    write_round(rec, 0, 0, ["It is 412 metres.", HOSTILE], published=0)
    write_round(rec, 1, 1, ["The bridge is 412 metres long.", "Maybe 600 m."], published=2)
    rec.close("done")
    return tmp_path / "out"


@pytest.fixture
def client(run_dir):
    with open_client([run_dir]) as c:
        yield c


def test_the_runs_page_and_the_run_page_show_what_the_db_and_summary_hold(client, run_dir):
    home = client.get("/")
    assert home.status_code == 200 and "align-test-1" in home.text
    page = client.get("/d/0/run/align-test-1")
    assert page.status_code == 200
    summary = json.loads((run_dir / "runs" / "align-test-1" / "summary.json").read_text())
    for row in summary["rounds"]:
        cells = page.text.split(f'<tr data-round="{row["round"]}">')[1].split("</tr>")[0]
        reward = cells.split('data-key="heldout_reward_mean">')[1].split("<")[0]
        assert reward.startswith(str(round(row["heldout_reward_mean"], 4)))
        assert f"[{round(row['heldout_reward_ci95'][0], 3)}, {round(row['heldout_reward_ci95'][1], 3)}]" in reward
    assert 'data-curve="heldout-reward"' in page.text and 'data-curve="loss"' in page.text
    png = client.get("/d/0/run/align-test-1/plot/heldout-reward.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    live = client.get("/d/0/run/align-test-1/live").json()
    assert live == {"status": "done", "rounds": 2, "done": 2, "last": summary["rounds"][-1]}


def test_completions_are_paged_and_filtered(client, run_dir):
    db = sqlite3.connect(run_dir / "ouroboros.db")
    total = db.execute("SELECT COUNT(*) FROM completions WHERE run_id='align-test-1'").fetchone()[0]
    page = client.get("/d/0/run/align-test-1/completions")
    assert f'<span class="total">{total}</span>' in page.text
    only_v1 = client.get("/d/0/run/align-test-1/completions", params={"version": 1, "phase": "train"})
    assert '<span class="total">2</span>' in only_v1.text and "600 m" in only_v1.text
    assert '<span class="total">1</span>' in client.get("/d/0/run/align-test-1/completions",
                                                        params={"text": "412 metres long"}).text
    high = client.get("/d/0/run/align-test-1/completions", params={"min_reward": 0.8, "phase": "train"})
    assert '<span class="total">2</span>' in high.text
    # The phase filter offers the phases the run stored (the loop's held-out pass is "eval").
    options = page.text.split('name="phase"')[1].split("</select>")[0]
    assert ">eval</option>" in options and ">train</option>" in options and "heldout" not in options
    held = client.get("/d/0/run/align-test-1/completions", params={"phase": "eval"})
    assert '<span class="total">2</span>' in held.text and "held-out answer of v1" in held.text


def test_a_completion_shows_its_version_lineage_and_one_prompt_across_versions(client):
    page = client.get("/d/0/run/align-test-1/c/r1-t1-s0")
    assert page.status_code == 200 and 'id="made-by">v1' in page.text
    # Round 1's learning published v2 (summary's weights_version) from a pair holding this answer.
    assert "the learning that published v2; staleness 0" in page.text
    # Round 0 published nothing new (v0 stayed): its completions trained nothing.
    assert "not trained on: its round published no new version" in client.get("/d/0/run/align-test-1/c/r0-t1-s0").text
    across = client.get("/d/0/run/align-test-1/prompt/t1")
    assert 'data-version="0"' in across.text and 'data-version="1"' in across.text


def test_a_hostile_reply_is_shown_inert_and_cut(client):
    page = client.get("/d/0/run/align-test-1/c/r0-t1-s1")
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "&lt;script&gt;alert" in page.text
    assert "<img src=x" not in page.text
    assert "cut here: " in page.text and len(page.text) < 260_000
    assert "script-src 'self'" in page.headers["content-security-policy"]
    listing = client.get("/d/0/run/align-test-1/completions")
    assert "<script>alert" not in listing.text


def test_unknown_ids_are_404_and_bad_directories_name_their_problem(client, tmp_path):
    for path in ("/d/0/run/nope", "/d/0/run/align-test-1/c/nope", "/d/0/run/align-test-1/prompt/nope",
                 "/d/0/experiment/99", "/d/0/span/nope", "/d/7/run/x", "/no/such/page",
                 "/d/0/run/align-test-1/plot/nope.png"):
        assert client.get(path).status_code == 404, path
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "ouroboros.db").write_bytes(b"not a database at all" * 100)
    (tmp_path / "old").mkdir()
    sqlite3.connect(tmp_path / "old" / "ouroboros.db").execute("CREATE TABLE runs (id TEXT)")
    with open_client([tmp_path / "missing", tmp_path / "corrupt", tmp_path / "old"]) as c:
        home = c.get("/")
        assert home.status_code == 200
        assert "no such directory" in home.text and "cannot be read" in home.text and "older schema" in home.text
        page = c.get("/d/1/run/x")
        assert page.status_code == 200 and "corrupt or not SQLite" in page.text and "Traceback" not in page.text


def test_a_pair_rated_in_the_viewer_reaches_the_next_round_once(client, run_dir):
    queue = client.get("/d/0/run/align-test-1/rate")
    assert 'data-key="r1-t1-s0|r1-t1-s1"' in queue.text
    csrf = queue.text.split('name="csrf" value="')[1].split('"')[0]
    refused = client.post("/d/0/run/align-test-1/rate/pair", data={"csrf": "forged", "a": "r1-t1-s0",
                                                                  "b": "r1-t1-s1", "winner": "b"})
    assert refused.status_code == 403
    stored = client.post("/d/0/run/align-test-1/rate/pair", data={"csrf": csrf, "a": "r1-t1-s0", "b": "r1-t1-s1",
                                                                "winner": "b", "notes": "the hedge is honest"},
                         follow_redirects=False)
    assert stored.status_code == 303
    assert 'data-key="r1-t1-s0|r1-t1-s1"' not in client.get("/d/0/run/align-test-1/rate").text
    [pref] = HumanInbox(run_dir / "runs" / "align-test-1", "align-test-1").preferences()
    assert pref["chosen"] == "Maybe 600 m." and pref["rater"] == "human" and pref["source"] == "view"
    # The running loop's next train round (the recorder, as the run's one writer) takes it as a pair, once.
    cfg = Config.model_validate({"env": {"name": "alignment"}, "align": {"judges": [{"name": "rules",
                                                                                      "kind": "rules"}]}})
    rec = Recorder(str(run_dir), "align-test-1", "align", cfg.model_dump(), env=AlignmentEnvironment(cfg))
    rec.start_round(2, 2)
    ts = [traj("r2-t1-s0", "t1", "412 metres.", 2, 0), traj("r2-t1-s1", "t1", "About 412 metres.", 2, 1)]
    scores = [Score(t.id, {"aggregate": 0.5, "judge_failed": 0.0}, 0.5 + 0.1 * i, "p") for i, t in enumerate(ts)]
    _, batch = rec.record(2, "train", ts, scores, make_pairs=True)
    human = [p for p in batch if p.id.startswith("human:")]
    assert len(human) == 1 and human[0].chosen == "Maybe 600 m." and human[0].rejected == "The bridge is 412 metres long."
    _, again = rec.record(2, "train", ts, scores, make_pairs=True)
    assert not [p for p in again if p.id.startswith("human:")]
    rec.close("done")


@pytest.mark.parametrize("human_ratings", ["annotate", "pairs"])
def test_a_tasks_run_keeps_ratings_as_annotations_unless_it_opts_in(tmp_path, human_ratings):
    from ouroboros.envs.tasks.environment import TasksEnvironment

    cfg = Config.model_validate({"env": {"name": "tasks", "human_ratings": human_ratings}})
    rec = Recorder(str(tmp_path / "out"), "tasks-1", "tasks", cfg.model_dump(), env=TasksEnvironment(cfg))
    write_round(rec, 0, 0, ["def f(): return 1", "def f(): return 2"], published=0)
    with open_client([tmp_path / "out"]) as c:
        rate = c.get("/d/0/run/tasks-1/rate")
        # The page says what the rating will do before anyone rates.
        assert ("next training round takes each preference" in rate.text) == (human_ratings == "pairs")
        assert ("keeps them as annotations" in rate.text) == (human_ratings == "annotate")
        csrf = rate.text.split('name="csrf" value="')[1].split('"')[0]
        stored = c.post("/d/0/run/tasks-1/rate/pair", data={"csrf": csrf, "a": "r0-t1-s0", "b": "r0-t1-s1",
                                                            "winner": "b"}, follow_redirects=False)
        assert stored.status_code == 303
    assert len(HumanInbox(tmp_path / "out" / "runs" / "tasks-1", "tasks-1").preferences()) == 1
    rec.start_round(1, 0)
    ts = [traj("r1-t1-s0", "t1", "def f(): return 3", 0, 0), traj("r1-t1-s1", "t1", "def f(): return 4", 0, 1)]
    _, batch = rec.record(1, "train", ts, [Score(t.id, {}, 0.2 * i, "p") for i, t in enumerate(ts)],
                          make_pairs=True)
    human = [p for p in batch if p.id.startswith("human:")]
    assert len(human) == (1 if human_ratings == "pairs" else 0)
    if human:
        assert human[0].chosen == "def f(): return 2" and human[0].rejected == "def f(): return 1"
    rec.close("done")


def test_a_rubric_score_from_the_viewer_joins_the_judge_as_the_human_teacher(client, run_dir):
    from ouroboros.actors.alignment_judge import AlignmentJudge
    from ouroboros.envs.alignment.tasks import AlignTask

    queue = client.get("/d/0/run/align-test-1/rate")
    csrf = queue.text.split('name="csrf" value="')[1].split('"')[0]
    bad = client.post("/d/0/run/align-test-1/rate/score", data={"csrf": csrf, "tid": "r1-t1-s0", "score_helpful": 9})
    assert bad.status_code == 400 and "from 1 to 5" in bad.text
    ok = client.post("/d/0/run/align-test-1/rate/score", data={"csrf": csrf, "tid": "r1-t1-s0", "score_helpful": 1,
                                                               "score_honest": 1}, follow_redirects=False)
    assert ok.status_code == 303
    inbox = run_dir / "runs" / "align-test-1" / "human-scores.jsonl"
    [line] = [json.loads(x) for x in inbox.read_text().splitlines()]
    assert line["rater"] == "human" and line["score"] == {"helpful": 1.0, "honest": 1.0}
    # The viewer wrote the ids the run's judge pool recorded for this candidate's prompt.
    assert (line["dialog_id"], str(line["prompt_id"])) == ("engineer-01", "3")
    cfg = Config.model_validate({"align": {"judges": [{"name": "rules", "kind": "rules"}]}})
    task = AlignTask(id="t1", split="train", kind="labyrinth", prompt="How long is the bridge?", terms=["412 metres"],
                     prompt_id=3, dialog_id="engineer-01")
    other = AlignTask(id="t2", split="train", kind="labyrinth", prompt="How long is the bridge?",
                      terms=["412 metres"], prompt_id=4, dialog_id="engineer-01")
    judge = AlignmentJudge(cfg, [task, other], "align-test-1", {}, None, [], str(inbox))
    same, elsewhere = judge.score([traj("x", "t1", "The bridge is 412 metres long.", 2, 0),
                                   traj("y", "t2", "The bridge is 412 metres long.", 2, 0)])
    assert same.components["teacher.human"] == 0.0  # the rating (1 of 5) is the human teacher's 0
    assert "teacher.human" not in elsewhere.components  # the same words to another prompt: not rated


def test_every_request_needs_the_token_and_a_local_host_name(run_dir):
    app = create_app([str(run_dir)], TOKEN)
    with TestClient(app, base_url="http://127.0.0.1:8765") as c:
        assert c.get("/").status_code == 403
        assert c.get("/d/0/run/align-test-1/live").status_code == 403
        assert c.get("/", params={"token": "wrong"}).status_code == 403
        assert c.get("/", params={"token": "wrong-\u00e9"}).status_code == 403  # non-ASCII: refused, not a crash
        assert c.get("/", params={"token": TOKEN}).status_code == 200
        assert c.get("/d/0/run/align-test-1").status_code == 200  # the cookie carries it now
    # A page whose name was rebound to this machine sends its own Host: refused.
    with TestClient(app, base_url="http://evil.example:8765", cookies={"ouroboros_token": TOKEN}) as c:
        assert c.get("/").status_code == 400


def test_forms_need_this_sessions_csrf_token_and_this_origin_and_a_pair_is_rated_once(client):
    queue = client.get("/d/0/run/align-test-1/rate")
    csrf = queue.text.split('name="csrf" value="')[1].split('"')[0]
    form = {"csrf": csrf, "a": "r1-t1-s0", "b": "r1-t1-s1", "winner": "a"}
    url = "/d/0/run/align-test-1/rate/pair"
    assert client.post(url, data=form, headers={"origin": "http://evil.example"}).status_code == 403
    # The same server and its token, but not the session the form was made for.
    with TestClient(client.app, base_url="http://127.0.0.1:8765", cookies={"ouroboros_token": TOKEN}) as stranger:
        assert stranger.post(url, data=form).status_code == 403
    assert client.post(url, data=form, follow_redirects=False).status_code == 303
    again = client.post(url, data={**form, "winner": "b"})
    assert again.status_code == 400 and "rated already" in again.text
    assert client.post(url, data={**form, "csrf": csrf + "\u00e9"}).status_code == 403


def test_the_live_poll_survives_a_diverged_loss(tmp_path):
    cfg = Config.model_validate({"env": {"name": "alignment"}})
    rec = Recorder(str(tmp_path / "nan"), "nan-1", "nan", cfg.model_dump(), env=AlignmentEnvironment(cfg))
    rec.start_round(0, 0)
    rec.finish_round({"round": 0, "weights_version": 0, "loss": float("nan"), "kl_ref": float("inf")})
    with open_client([tmp_path / "nan"]) as c:
        live = c.get("/d/0/run/nan-1/live")
        assert live.status_code == 200 and live.json()["last"]["loss"] is None
        assert c.get("/d/0/run/nan-1").status_code == 200


def test_plot_writes_the_same_curves_as_png_files(run_dir, tmp_path):
    from typer.testing import CliRunner

    from ouroboros.cli import app

    result = CliRunner().invoke(app, ["plot", str(run_dir), "--out", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert "heldout-reward.png" in names and "loss.png" in names
    assert (tmp_path / "plots" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    missing = CliRunner().invoke(app, ["plot", str(tmp_path / "nowhere")])
    assert missing.exit_code != 0


def test_an_experiments_span_tree_opens_level_by_level_in_pages(run_dir):
    from ouroboros.store.experiments import ExperimentStore

    store = ExperimentStore(run_dir / "ouroboros.db")
    eid = store.start("align-test-1", 0, "agent-0", "FROM python", goal="<b>measure</b> the bridge")
    root = {"id": "root", "experiment_id": eid, "parent_id": None, "kind": "cycle", "name": "cycle 0",
            "started_at": 1.0, "duration_s": 2.0, "prompt_tokens": 0, "completion_tokens": 0, "attrs": "{}"}
    kids = [{**root, "id": f"k{i:03d}", "parent_id": "root", "kind": "query", "name": f"query {i}",
             "started_at": 2.0 + i, "attrs": json.dumps({"prompt": "p", "reply": "<script>x</script>",
                                                        "attempts": [{"error": "no JSON"}]})}
            for i in range(120)]
    store.add_spans([root] + kids)
    store.close()
    with open_client([run_dir]) as c:
        page = c.get(f"/d/0/experiment/{eid}")
        assert page.status_code == 200 and "&lt;b&gt;measure" in page.text
        assert 'data-id="root"' in page.text and "120 children" in page.text
        first = c.get(f"/d/0/experiment/{eid}/spans", params={"parent": "root"})
        assert first.text.count('class="span"') == 50 and "70 more" in first.text
        last = c.get(f"/d/0/experiment/{eid}/spans", params={"parent": "root", "offset": 100})
        assert last.text.count('class="span"') == 20 and "more</button>" not in last.text
        span = c.get("/d/0/span/k007")
        assert span.status_code == 200 and "&lt;script&gt;x" in span.text and "no JSON" in span.text
        listing = c.get("/d/0/experiments", params={"run": "align-test-1"})
        assert f'/d/0/experiment/{eid}"' in listing.text


def test_the_generator_and_learner_log_probs_are_overlaid_per_token(client, run_dir):
    from ouroboros.store.shards import write_shard
    from ouroboros.types import LEARNER_TURN_SCHEMA

    shards = run_dir / "runs" / "align-test-1" / "shards"
    turn = {"run_id": "align-test-1", "turn_id": "r0-t1-s0:0", "trajectory_id": "r0-t1-s0", "step": 0, "round": 0,
            "learner_step": 3, "learner_version": 0, "weights_version": 0, "staleness": 0, "reward": 0.9,
            "raw_reward": 0.9, "advantage": 0.4, "tokens": [" Paris", "\n", "<b>"],
            "generator_logprobs": [-0.5, -1.0, -2.0],
            "learner_logprobs": [-0.5, -1.5, -2.01], "clipped": [False, True, False], "masked": [False, False, True]}
    other = {**turn, "turn_id": "x:0", "trajectory_id": "r0-t1-s1"}
    write_shard(shards, 0, "learner-turns", [turn, other], LEARNER_TURN_SCHEMA)
    page = client.get("/d/0/run/align-test-1/c/r0-t1-s0")
    body = page.text.split('id="tokens"')[1].split("</table>")[0]
    rows = body.split("<tr")[2:]  # past the header
    assert len(rows) == 3
    assert 'class="mismatch clipped"' in "<tr" + rows[1] and "0.5" in rows[1]
    assert 'class=" masked"' in "<tr" + rows[2] and "mismatch" not in rows[0]
    # Each token's own text beside its numbers: a space and a newline made visible, markup escaped.
    assert "·Paris" in rows[0] and "\\n" in rows[1] and "&lt;b&gt;" in rows[2] and "<b>" not in rows[2]
    assert 'id="tokens"' not in client.get("/d/0/run/align-test-1/c/r1-t1-s0").text


def test_the_dialogue_stage_in_the_browser_saves_what_the_terminal_chat_saves(tmp_path):
    from ouroboros.envs.alignment.shards import Dialog, read_jsonl
    from ouroboros.envs.alignment.stages import append_dialogs
    from ouroboros.view.chat import ChatDesk

    cfg = Config.model_validate({"env": {"name": "alignment"}, "align": {"data_dir": str(tmp_path / "data")}})
    heard: list[list[dict]] = []
    failing = {"now": False}

    def model(messages, temperature=0.0, max_new_tokens=None):
        heard.append(messages)
        if failing["now"]:
            raise RuntimeError("engine stopped")
        return f"<script>alert(1)</script> reply {len(heard)}"

    desk = ChatDesk(model, lambda dialogs: append_dialogs(cfg, dialogs), "policy (tiny, v0)")
    app = create_app([], TOKEN, chat=desk)
    with TestClient(app, base_url="http://127.0.0.1:8766", cookies={"ouroboros_token": TOKEN}) as c:
        first = c.get("/chat")
        assert first.status_code == 200 and 'id="empty"' in first.text
        assert 'href="/chat"' in c.get("/").text
        csrf = first.text.split('name="csrf" value="')[1].split('"')[0]
        assert c.post("/chat/say", data={"csrf": "forged", "text": "hi"}).status_code == 403
        for text in ("How long is the bridge?", "Are you sure?"):
            assert c.post("/chat/say", data={"csrf": csrf, "text": text}, follow_redirects=False).status_code == 303
        page = c.get("/chat").text
        assert "&lt;script&gt;alert(1)&lt;/script&gt; reply 2" in page and "<script>alert(1)" not in page
        # The model saw the whole conversation so far, as chat messages.
        assert [m["role"] for m in heard[-1]] == ["system", "user", "assistant", "user"]
        # A failed model call says so; the person's text stays in the box and no turn is half-kept.
        failing["now"] = True
        broken = c.post("/chat/say", data={"csrf": csrf, "text": "third question"})
        assert broken.status_code == 400 and "engine stopped" in broken.text and ">third question</textarea>" in broken.text
        assert c.post("/chat/say", data={"csrf": csrf, "text": "   "}).status_code == 400
        assert c.post("/chat/say", data={"csrf": csrf, "text": "x" * 5000}).status_code == 400
        saved = c.post("/chat/save", data={"csrf": csrf})
        assert saved.status_code == 200 and 'id="saved"' in saved.text and 'id="empty"' in saved.text
        # Another browser session has its own conversation: nothing to save there.
        with TestClient(app, base_url="http://127.0.0.1:8766", cookies={"ouroboros_token": TOKEN}) as other:
            csrf2 = other.get("/chat").text.split('name="csrf" value="')[1].split('"')[0]
            assert "nothing was said" in other.post("/chat/save", data={"csrf": csrf2}).text
    [dialog] = read_jsonl(tmp_path / "data" / "dialogs.jsonl", Dialog, print)
    assert [(t.role, t.text) for t in dialog.turns] == [
        ("human", "How long is the bridge?"), ("assistant", "<script>alert(1)</script> reply 1"),
        ("human", "Are you sure?"), ("assistant", "<script>alert(1)</script> reply 2")]


def test_the_console_fragment_the_page_polls_holds_each_waiting_request_escaped(client, run_dir):
    from ouroboros.backends.human import PENDING, write_whole

    assert "section" not in client.get("/d/0/console/asks").text  # nothing waiting
    page = client.get("/d/0/console")
    assert 'data-fragment="/d/0/console/asks"' in page.text and '<p id="empty">' in page.text
    write_whole(run_dir / "console" / PENDING / "k1.json", {
        "key": "k1", "request_id": "r1", "session": "cycle-1", "asked_at": 1.0,
        "messages": [{"role": "user", "content": "<script>window.__pwned = 1</script> what next?"}]})
    fragment = client.get("/d/0/console/asks").text
    assert '<section class="ask" data-key="k1">' in fragment and 'name="key" value="k1"' in fragment
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in fragment and "<script>" not in fragment
    csrf = fragment.split('name="csrf" value="')[1].split('"')[0]
    assert csrf and csrf in client.get("/d/0/console").text  # this session's token, as the page's forms
    assert '<p id="empty" hidden>' in client.get("/d/0/console").text


def test_an_experiments_commit_and_diff_open_from_its_page_and_only_its_commit_is_shown(run_dir):
    from ouroboros.store.experiments import ExperimentStore
    from ouroboros.store.git_repo import ExperimentRepo, show_commit

    store = ExperimentStore(run_dir / "ouroboros.db")
    eid = store.start("align-test-1", 0, "agent-0", "FROM python", goal="sum the squares")
    repo = ExperimentRepo(run_dir / "experiments")
    commit = repo.commit_experiment(eid, {"run_1.py": "print(sum(i * i for i in range(10)))  # <b>285</b>\n"},
                                    "experiment 1: finalized")
    store.set_commit(eid, commit)
    other = store.start("align-test-1", 1, "agent-0", "FROM python", goal="no commit yet")
    store.close()
    with open_client([run_dir]) as c:
        page = c.get(f"/d/0/experiment/{eid}")
        assert f'href="/d/0/experiment/{eid}/diff"' in page.text
        diff = c.get(f"/d/0/experiment/{eid}/diff")
        assert diff.status_code == 200 and commit in diff.text and "experiment 1: finalized" in diff.text
        assert "+print(sum(i * i for i in range(10)))  # &lt;b&gt;285&lt;/b&gt;" in diff.text  # the patch, escaped
        assert c.get(f"/d/0/experiment/{other}/diff").status_code == 404  # no commit: nothing to show
    # Only a plain commit id reaches git: not an option, a revision expression or another repository.
    for forged in ("--output=/tmp/x", "HEAD", f"{commit[:12]}~1", "../x", ""):
        assert show_commit(run_dir / "experiments", forged) is None, forged
    assert show_commit(run_dir / "no-repo", commit) is None
    assert show_commit(run_dir / "experiments", commit, limit=50).endswith("characters)")

"""The viewer feeding live runs. A human rating reaches a running loop: while `ouroboros run` (the
alignment smoke, through Ray) is going, a pair is rated in the viewer and the loop's next training
round trains on it, once. A person acts in the model's place: an experiment cycle on the `human`
backend asks the viewer's console, and the answer typed there is its completion."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import pytest

starlette = pytest.importorskip("starlette")
from conftest import viewer_client  # noqa: E402


def test_a_pair_rated_during_a_run_is_a_pair_of_its_next_training_round(align_smoke_run, align_smoke_rating):
    """The shared alignment run (tests/conftest.py) had one pair rated in the viewer while it ran."""
    a, b = align_smoke_rating["a"], align_smoke_rating["b"]
    assert align_smoke_rating["rated_while_running"]
    db = sqlite3.connect(align_smoke_run / "ouroboros.db")
    human = db.execute("SELECT round, chosen_trajectory, rejected_trajectory FROM pairs WHERE id LIKE 'human:%'"
                       ).fetchall()
    assert [(c, r) for _, c, r in human if {c, r} == {a, b}] == [(a, b)]  # exactly once, a preferred
    [round_] = {r for r, c, _ in human if c == a}
    rated_round = db.execute("SELECT round FROM completions WHERE trajectory_id=?", (a,)).fetchone()[0]
    # Taken by the first round whose pairs were built after the rating: the candidates' own round
    # when the recorder had not built its pairs yet (its learning comes after), else the next one.
    assert round_ in (rated_round, rated_round + 1)
    published = dict(db.execute("SELECT round, json_extract(metrics, '$.weights_version') FROM rounds"))
    assert published[round_] > published.get(round_ - 1, 0)  # that round's learning published a version


def test_a_person_answers_in_the_models_place_in_an_experiment_cycle(tmp_path):
    from ouroboros.backends.human import pending

    out = tmp_path / "exp"
    proc = subprocess.Popen([sys.executable, "-m", "ouroboros", "experiment", "configs/smoke-experiment.yaml",
                             "--cycles", "1", "--parallel", "1", "--out", str(out), "--set", "generator.backend=human",
                             "--set", "generator.human.timeout_s=120"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reply = ('{"action": "finalize", "data": "The sum of the squares below 10 is 285.", '
             '"notes": "answered by a person <script>x</script>"}')
    try:
        deadline = time.monotonic() + 120
        while not (pending(out / "console") and (out / "ouroboros.db").is_file()):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the cycle never asked the console"
            time.sleep(0.1)
        with viewer_client(out) as client:
            page = client.get("/d/0/console")
            key = page.text.split('<section class="ask" data-key="')[1].split('"')[0]
            assert "finalize" in page.text  # the prompt the model would have seen, with its actions
            csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
            assert client.post("/d/0/console/answer", data={"csrf": "x", "key": key, "text": reply}).status_code == 403
            sent = client.post("/d/0/console/answer", data={"csrf": csrf, "key": key, "text": reply},
                               follow_redirects=False)
            assert sent.status_code == 303
            assert client.post("/d/0/console/answer", data={"csrf": csrf, "key": "../../etc/passwd",
                                                            "text": "x"}).status_code == 404
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    db = sqlite3.connect(out / "ouroboros.db")
    status, actions = db.execute("SELECT status, actions FROM experiments").fetchone()
    assert status == "finalized" and actions == 1
    attrs = [json.loads(a) for (a,) in db.execute("SELECT attrs FROM traces WHERE kind='generate'")]
    assert [a["backend"] for a in attrs] == ["human"] and attrs[0]["reply"] == reply
    assert not pending(out / "console")

"""The viewer feeding live runs. A human rating reaches a running loop: while `ouroboros run` (the
alignment smoke, through Ray) is going, a pair is rated in the viewer and the loop's next training
round trains on it, once. A person acts in the model's place: an experiment cycle on the `human`
backend asks the viewer's console, and the answer typed there is its completion: in a real browser,
in tests/test_view_browser.py."""
from __future__ import annotations

import sqlite3


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

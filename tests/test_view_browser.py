"""`ouroboros view` in a real browser: headless Chromium (Debian's package) driven by Selenium,
over the alignment smoke run (shared with the loop's tests) and a run holding hostile replies.

Screenshots go to test-artifacts/view/ (ignored by git) for a person to look at."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from ouroboros.store.human_inbox import HumanInbox

TOKEN = "browser-test-token"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "view"
GENERATE_SPAN = "//li[span[@class='kind' and text()='generate']]/a"  # a model call's span in a tree
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">' + "B" * 300_000


def _browser_or_skip():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        message = "headless Chromium is not installed (apt-get install -y chromium chromium-driver; `make system`)"
        if os.environ.get("OUROBOROS_REQUIRE_SANDBOX") == "1":
            pytest.fail(message + ": CI installs it")
        pytest.skip(message)
    pytest.importorskip("selenium")
    return chromium, driver


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    from ouroboros.actors.recorder import Recorder
    from ouroboros.config import Config
    from ouroboros.envs.alignment.environment import AlignmentEnvironment
    from ouroboros.types import Action, Completion, Request, Score, Step, Trajectory

    out = tmp_path_factory.mktemp("hostile") / "out"
    cfg = Config.model_validate({"env": {"name": "alignment"}, "align": {"judges": [{"name": "rules",
                                                                                      "kind": "rules"}]}})
    rec = Recorder(str(out), "hostile-1", "hostile", cfg.model_dump(), env=AlignmentEnvironment(cfg))
    rec.start_round(0, 0)
    c = Completion("req-h", HOSTILE, [1], [0.0], 0, "hf")
    t = Trajectory("h0", "t1", "train", 1, 0, [Step(0, Request("req-h", [{"role": "user", "content": "<b>hi</b>"}]), c,
                                                    Action("answer", HOSTILE, "", True), None, {})])
    c2 = Completion("req-h1", "a plain answer", [1], [0.0], 0, "hf")
    t2 = Trajectory("h1", "t1", "train", 1, 1, [Step(0, Request("req-h1", [{"role": "user", "content": "<b>hi</b>"}]),
                                                     c2, Action("answer", "a plain answer", "", True), None, {})])
    rec.record(0, "train", [t, t2], [Score("h0", {"judge_failed": 0.0}, 0.1, "p"),
                                     Score("h1", {"judge_failed": 0.0}, 0.2, "p")], make_pairs=True)
    rec.finish_round({"round": 0, "weights_version": 0, "heldout_reward_mean": 0.1})
    rec.close("done")
    return out


@contextlib.contextmanager
def serving(run_dirs: list[str]):
    """`ouroboros view` over `run_dirs` on a free loopback port, in a thread: its base URL."""
    import uvicorn

    from ouroboros.view.server import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    srv = uvicorn.Server(uvicorn.Config(create_app(run_dirs, TOKEN), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "the viewer did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(align_smoke_run, hostile_run):
    with serving([str(align_smoke_run), str(hostile_run)]) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    chromium, driver = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    b = webdriver.Chrome(service=Service(driver), options=options)
    b.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield b
    b.quit()


def shot(browser, name: str) -> None:
    browser.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def test_runs_rounds_and_curves_match_summary_and_db(server, browser, align_smoke_run):
    from selenium.webdriver.common.by import By

    run_dir = (align_smoke_run / "latest").resolve()
    run_id = run_dir.name
    summary = json.loads((run_dir / "summary.json").read_text())["rounds"]
    browser.get(server + "/?token=" + TOKEN)  # the address `ouroboros view` prints; a cookie carries it on
    click_to_next_page(browser, browser.find_element(By.LINK_TEXT, run_id))
    rows = browser.find_elements(By.CSS_SELECTOR, "#rounds tbody tr")
    assert [int(r.get_attribute("data-round")) for r in rows] == [r["round"] for r in summary]
    for row, expected in zip(rows, summary):
        cell = row.find_element(By.CSS_SELECTOR, 'td[data-key="heldout_reward_mean"]').text
        assert cell.startswith(f"{round(expected['heldout_reward_mean'], 4)}")
    images = browser.find_elements(By.CSS_SELECTOR, "#curves img")
    assert images and all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i)
                          for i in images)
    shot(browser, "run")
    browser.get(f"{server}/d/0/run/{run_id}/completions")
    total = int(browser.find_element(By.CSS_SELECTOR, ".pager .total").text)
    db = sqlite3.connect(align_smoke_run / "ouroboros.db")
    assert total == db.execute("SELECT COUNT(*) FROM completions WHERE run_id=?", (run_id,)).fetchone()[0]
    click_to_next_page(browser, browser.find_elements(By.CSS_SELECTOR, "#completions a.reply")[0])
    tid = browser.current_url.rsplit("/c/", 1)[1]
    version = db.execute("SELECT weights_version FROM completions WHERE run_id=? AND trajectory_id=?",
                         (run_id, tid)).fetchone()[0]
    assert browser.find_element(By.ID, "made-by").text.startswith(f"v{version}")
    shot(browser, "completion")


def click_to_next_page(browser, element, timeout: float = 30) -> None:
    """Click a link or submit button and wait for the page it leads to: a click returns before
    the browser has navigated, and a loaded machine serves the next page late."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = browser.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(browser, timeout).until(expected_conditions.staleness_of(old))
    WebDriverWait(browser, timeout).until(lambda b: b.execute_script("return document.readyState") == "complete")


def test_a_pair_rated_in_the_browser_is_stored_in_the_runs_inbox(server, browser, align_smoke_run):
    from selenium.webdriver.common.by import By

    run_dir = (align_smoke_run / "latest").resolve()
    browser.get(f"{server}/?token={TOKEN}")
    browser.get(f"{server}/d/0/run/{run_dir.name}/rate")
    first = browser.find_element(By.CSS_SELECTOR, "section.pair")
    key = first.get_attribute("data-key")
    b_id = first.find_element(By.CSS_SELECTOR, 'form.prefer input[name="b"]').get_attribute("value")
    shot(browser, "rate")
    click_to_next_page(browser, first.find_element(By.CSS_SELECTOR, 'form.prefer button[value="b"]'))
    assert browser.find_element(By.ID, "saved").text.startswith("Stored")
    assert key not in [s.get_attribute("data-key") for s in browser.find_elements(By.CSS_SELECTOR, "section.pair")]
    # The inbox also holds the pair rated while the run went (tests/conftest.py: align_smoke_run).
    prefs = [p for p in HumanInbox(run_dir, run_dir.name).preferences()
             if sorted([p["chosen_trajectory"], p["rejected_trajectory"]]) == sorted(key.split("|"))]
    assert len(prefs) == 1 and prefs[0]["winner"] == "b" and prefs[0]["chosen_trajectory"] == b_id


def test_a_hostile_reply_is_inert_in_the_browser(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/?token={TOKEN}")
    browser.get(f"{server}/d/1/run/hostile-1/c/h0")
    reply = browser.find_element(By.ID, "reply").text
    assert reply.startswith("<script>window.__pwned = 1</script>") and "cut here" in reply
    assert browser.execute_script("return window.__pwned === undefined")
    browser.get(f"{server}/d/1/run/hostile-1/completions")
    assert browser.execute_script("return window.__pwned === undefined")
    browser.get(f"{server}/d/1/run/hostile-1/rate")
    shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "section.pair .candidate pre")]
    assert any(t.startswith("<script>window.__pwned = 1</script>") for t in shown), shown
    assert browser.find_element(By.CSS_SELECTOR, "section.pair pre.prompt").text == "<b>hi</b>"
    assert browser.execute_script("return window.__pwned === undefined")
    shot(browser, "hostile")


def test_a_person_acts_in_an_experiment_cycle_from_a_live_console_and_opens_its_trace(browser, tmp_path):
    """An experiment cycle on the `human` backend waits in the console. A person types each turn in
    the browser: a run whose program takes a few seconds, whose next request appears on the open
    page without a reload, then a finalize. The cycle ends with those answers as its completions,
    and the person opens its trace down to a turn's span, where the reply's markup shows as text."""
    import subprocess
    import sys

    from selenium.webdriver.common.by import By

    from conftest import viewer_client
    from ouroboros.backends.human import pending

    out = tmp_path / "exp"
    proc = subprocess.Popen([sys.executable, "-m", "ouroboros", "experiment", "configs/smoke-experiment.yaml",
                             "--cycles", "1", "--parallel", "1", "--out", str(out), "--set", "generator.backend=human",
                             "--set", "generator.human.timeout_s=120"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The run's program sleeps, so its next request comes seconds after the answer that ran it.
    run = '{"action": "run", "data": "import time\\ntime.sleep(6)\\nprint(285)", "notes": "by hand"}'
    final = ('{"action": "finalize", "data": "The sum of the squares below 10 is 285.", '
             '"notes": "answered by a person <script>window.__pwned = 3</script>"}')

    def answer(text: str) -> None:
        ask = browser.find_element(By.CSS_SELECTOR, "section.ask")
        assert "finalize" in ask.text  # the prompt the model would have seen, with its actions
        ask.find_element(By.TAG_NAME, "textarea").send_keys(text)
        click_to_next_page(browser, ask.find_element(By.TAG_NAME, "button"))
        assert browser.find_element(By.ID, "saved").text == "Sent."

    def wait_for(condition, what: str, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, what
            time.sleep(0.2)

    try:
        wait_for(lambda: pending(out / "console") and (out / "ouroboros.db").is_file(), "the cycle never asked")
        # What the console's form is checked for, from outside a page: a forged CSRF token, and a
        # key that names a file outside the console. Neither answers the cycle.
        with viewer_client(out) as client:
            page = client.get("/d/0/console")
            csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
            assert client.post("/d/0/console/answer", data={"csrf": "x", "key": "k", "text": run}).status_code == 403
            assert client.post("/d/0/console/answer", data={"csrf": csrf, "key": "../../etc/passwd",
                                                            "text": "x"}).status_code == 404
        with serving([str(out)]) as url:
            browser.get(f"{url}/?token={TOKEN}")
            browser.get(f"{url}/d/0/console")
            answer(run)
            # The page after sending has nothing waiting; the next turn's request appears on it.
            assert browser.find_element(By.ID, "empty").is_displayed()
            assert not browser.find_elements(By.CSS_SELECTOR, "section.ask")
            wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "section.ask"), "no live request", 60)
            assert not browser.find_element(By.ID, "empty").is_displayed()
            shot(browser, "console-live-request")
            answer(final)
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-3000:]

            # The trace: the experiments list, the experiment, its span tree opened down to a turn
            # that called the model, and that span.
            browser.get(f"{url}/d/0/experiments")
            click_to_next_page(browser, browser.find_element(By.CSS_SELECTOR, "#experiments tbody a"))
            commit = browser.find_element(By.ID, "commit").text  # committed to the experiments repo
            experiment_page = browser.current_url
            deadline = time.monotonic() + 30
            while len(browser.find_elements(By.XPATH, GENERATE_SPAN)) < 2:
                assert time.monotonic() < deadline, browser.find_element(By.ID, "trace").text
                for button in browser.find_elements(By.CSS_SELECTOR, "#trace button.open:not([disabled])"):
                    button.click()  # it fetches that span's children into the tree, and goes
                time.sleep(0.3)
            shot(browser, "experiment-trace")
            click_to_next_page(browser, browser.find_elements(By.XPATH, GENERATE_SPAN)[-1])
            body = browser.find_element(By.TAG_NAME, "main").text
            assert body.startswith("generate") and "human" in body  # the turn's backend: the person
            assert "<script>window.__pwned = 3</script>" in body  # the reply's markup, as text
            assert browser.execute_script("return window.__pwned") is None
            shot(browser, "experiment-span")
            # The experiment's commit: what the cycle wrote, the person's program among it.
            browser.get(experiment_page)
            browser.find_element(By.ID, "diff").click()
            shown = browser.find_element(By.ID, "diff").text
            assert shown.startswith(f"commit {commit}") and "time.sleep(6)" in shown
            shot(browser, "experiment-diff")
    finally:
        if proc.poll() is None:
            proc.kill()
    db = sqlite3.connect(out / "ouroboros.db")
    status, actions = db.execute("SELECT status, actions FROM experiments").fetchone()
    assert status == "finalized" and actions == 2
    result, ok = db.execute("SELECT result, ok FROM steps WHERE action='run'").fetchone()
    assert ok == 1 and "285" in result  # the person's program ran in the sandbox
    attrs = [json.loads(a) for (a,) in db.execute("SELECT attrs FROM traces WHERE kind='generate' ORDER BY started_at")]
    assert [a["backend"] for a in attrs] == ["human", "human"] and [a["reply"] for a in attrs] == [run, final]
    assert not pending(out / "console")

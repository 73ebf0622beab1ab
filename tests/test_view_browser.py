"""`ouroboros view` in a real browser: headless Chromium (Debian's package) driven by Selenium,
over the alignment smoke run (shared with the loop's tests) and a run holding hostile replies.

Screenshots go to test-artifacts/view/ (ignored by git) for a person to look at."""
from __future__ import annotations

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


@pytest.fixture(scope="module")
def server(align_smoke_run, hostile_run):
    import uvicorn

    from ouroboros.view.server import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    app = create_app([str(align_smoke_run), str(hostile_run)], TOKEN)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "the viewer did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


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

"""The auditor's web view in a real browser: Debian's chromium driven by Selenium against
``fedgate audit serve``'s app on a loopback port, over homes built by fedgate's own writers.

chromium and chromium-driver come from ``.ci/chromium.sh`` (``make test`` puts them on PATH);
the tests skip only when that script could not provide them, and fail in CI (``$CI``) then.
Screenshots of every page go to ``$FEDGATE_TEST_ARTIFACTS`` (else the test's tmp dir).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedgate.server.auditweb.app import create_app
from fedgate.server.auditweb.sources import discover
from fedgate.server.launch.processes import free_port_block
from tests.audit_home_kit import HOSTILE, Built, add_global_version, add_release, build_home


def _browser_binaries() -> tuple[str, str] | None:
    driver = shutil.which("chromedriver")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    return (browser, driver) if driver and browser else None


BINARIES = _browser_binaries()
if BINARIES is None:
    if os.environ.get("CI"):
        pytest.fail("chromium/chromedriver missing in CI: run .ci/chromium.sh", pytrace=False)
    pytest.skip("chromium and chromium-driver not installed (.ci/chromium.sh installs them)",
                allow_module_level=True)  # fmt: skip


class Server:
    """The web view on a free loopback port, in a thread (uvicorn), until ``stop``."""

    def __init__(self, home: Path) -> None:
        import uvicorn

        self.port = free_port_block(1)
        app = create_app(discover(home))
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", ws="none"))  # fmt: skip
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the audit web view did not start")
            time.sleep(0.02)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert BINARIES is not None
    options = webdriver.ChromeOptions()
    options.binary_location = BINARIES[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-extensions"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=BINARIES[1]))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("audit-home")
    built = build_home(root / "home", hostile=True, artifact=True)
    built.releases = add_release(built, add_global_version(built))  # type: ignore[attr-defined]
    return built


@pytest.fixture(scope="module")
def server(home: Built) -> Iterator[Server]:
    srv = Server(home.home)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("FEDGATE_TEST_ARTIFACTS")
    out = Path(where) / "audit-web" if where else tmp_path_factory.mktemp("screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _open(browser, server: Server, path: str, shots: Path, name: str):  # type: ignore[no-untyped-def]
    browser.get(server.url(path))
    assert browser.find_element("id", "title").text  # the page rendered
    shot = shots / f"{name}.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 5000
    return browser


def test_overview_shows_both_regions_verified(browser, server, shots) -> None:
    _open(browser, server, "/", shots, "overview")
    rows = browser.find_elements("css selector", "tr.chain")
    assert {r.get_attribute("data-chain"): r.get_attribute("data-status") for r in rows} == {
        "eu": "verified",
        "us": "verified",
        "coordinator": "verified",
    }
    assert "Every audit chain verifies" in browser.find_element("id", "summary").text


def test_run_page_charts_every_round(browser, server, home, shots) -> None:
    run = home.runs["eu"][0]
    _open(browser, server, f"/runs/eu/{run}", shots, "run")
    chart = browser.find_element("css selector", "#charts svg.chart")
    assert chart.is_displayed() and chart.size["width"] > 300
    assert chart.get_attribute("data-rounds") == str(home.rounds)
    points = chart.find_elements("css selector", "circle.point[data-series='val-acc']")
    assert sorted(int(p.get_attribute("data-round")) for p in points) == list(
        range(1, home.rounds + 1)
    )
    assert len(browser.find_elements("css selector", "#rounds tr.round")) == home.rounds
    assert browser.find_element("id", "round-count").text == str(home.rounds)


def test_every_other_page_renders(browser, server, home, shots) -> None:
    eu = home.devices["eu"]
    run = home.runs["eu"][0]
    _open(browser, server, "/runs", shots, "runs")
    assert len(browser.find_elements("css selector", "#runs tr.run")) == 2
    _open(browser, server, f"/runs/eu/{run}/rounds/2", shots, "round")
    assert len(browser.find_elements("css selector", "#clients tr.client")) == len(eu) + 1
    _open(browser, server, f"/devices/eu/{eu[-1]}", shots, "device-revoked")
    assert "lost phone" in browser.find_element("id", "revocation").text
    _open(browser, server, "/devices", shots, "devices")
    _open(browser, server, "/artifacts", shots, "artifacts")
    link = browser.find_element("css selector", "#artifacts tr.artifact a")
    link.click()
    assert browser.find_element("css selector", "#lineage svg.lineage").is_displayed()
    browser.save_screenshot(str(shots / "artifact-lineage.png"))
    _open(browser, server, "/gate", shots, "gate")
    _open(browser, server, "/global", shots, "global")
    _open(browser, server, "/global/1", shots, "global-lineage")
    graph = browser.find_element("css selector", "#lineage svg.lineage")
    nodes = graph.find_elements("css selector", "g.lineage-node")
    assert len(nodes) == 1 + 2 + 2 + 2 * (len(eu) - 1)  # version, artifacts, runs, devices


def test_a_release_page_draws_its_lineage_back_to_the_devices(browser, server, home,
                                                              shots) -> None:  # fmt: skip
    published, held = home.releases
    _open(browser, server, "/releases", shots, "releases")
    rows = browser.find_elements("css selector", "#releases tr.release")
    assert sorted(int(r.get_attribute("data-seq")) for r in rows) == [published] * 4 + [held] * 2
    _open(browser, server, f"/releases/{published}", shots, "release-lineage")
    assert "Every check of this release holds" in browser.find_element("id", "release-status").text
    graph = browser.find_element("css selector", "#lineage svg.lineage")
    assert graph.is_displayed()
    nodes = graph.find_elements("css selector", "g.lineage-node")
    keys = [g.get_attribute("data-key") for g in nodes]
    columns = {p: sum(k.startswith(p) for k in keys) for p in ("t:", "v", "a:", "r:", "d:")}
    assert columns == {"t:": 4, "v": 1, "a:": 2, "r:": 2, "d:": 8}
    lines = graph.find_elements("css selector", "line")
    assert len(lines) == 4 + 2 + 2 + 8  # students->version->artifacts->runs->devices
    device = home.devices["us"][0]
    graph.find_element("css selector", f"g.lineage-node[data-key='d:us:{device}'] a").click()
    assert browser.current_url.endswith(f"/devices/us/{device}")
    assert browser.find_element("id", "title").text.startswith(f"device {device[:16]}")
    browser.save_screenshot(str(shots / "release-lineage-device.png"))


def test_html_in_a_device_id_or_reason_is_shown_as_text(browser, server, home, shots) -> None:
    run = home.runs["eu"][0]
    _open(browser, server, f"/runs/eu/{run}/rounds/1?q=script", shots, "hostile-round")
    assert browser.title.startswith("run ")  # the script would have set it to "pwned"
    rows = browser.find_elements("css selector", "#clients tr.client")
    assert len(rows) == 1
    assert HOSTILE in rows[0].find_element("css selector", "td.detail").text
    assert HOSTILE[:16] in rows[0].text  # the claimed device id, cut but as text
    assert browser.find_elements("css selector", "#clients img") == []  # no tag was made
    assert browser.execute_script("return window.__pwned === undefined") is True  # no handler ran


def test_a_database_edited_by_sql_is_broken_in_red_at_that_event(
    browser, home, tmp_path, shots
) -> None:
    edited = tmp_path / "edited"
    shutil.copytree(home.home, edited)
    with sqlite3.connect(edited / "region-us.db") as db:
        seq = db.execute("SELECT min(seq) FROM events WHERE kind = 'update.rejected'").fetchone()[0]
        db.execute("UPDATE events SET payload = replace(payload, 'revoked-device', 'none') "
                   "WHERE seq = ?", (seq,))  # fmt: skip
    srv = Server(edited)
    try:
        _open(browser, srv, "/", shots, "overview-broken")
        row = browser.find_element("css selector", "tr.chain[data-chain='us']")
        assert row.get_attribute("data-status") == "broken"
        assert f"broken at event {seq} (update.rejected)" in row.text
        colour = row.find_element("css selector", ".broken").value_of_css_property("color")
        assert colour in ("rgba(209, 36, 47, 1)", "rgb(209, 36, 47)")  # --bad, red
        for name in ("eu", "coordinator"):
            ok = browser.find_element("css selector", f"tr.chain[data-chain='{name}']")
            assert ok.get_attribute("data-status") == "verified"
        assert "does NOT verify" in browser.find_element("id", "summary").text
    finally:
        srv.stop()

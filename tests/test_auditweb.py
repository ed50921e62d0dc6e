"""The auditor's web view in-process (FastAPI's TestClient): every page and its JSON twin over a
home of two regions and a coordinator built by fedgate's own writers; read-only (methods,
path tricks, the database untouched), the token, escaping, paging and filters; the report."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fedgate.errors import UsageError
from fedgate.server.auditweb.app import create_app, path_refused
from fedgate.server.auditweb.report import write_report
from fedgate.server.auditweb.serve import check_bind
from fedgate.server.auditweb.sources import discover, parse_db_options
from tests.audit_home_kit import HOSTILE, Built, add_global_version, add_release, build_home
from tests.conftest import fedgate_cli

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Built:
    built = build_home(tmp_path_factory.mktemp("auditweb") / "home", hostile=True, artifact=True)
    built.version = add_global_version(built)  # type: ignore[attr-defined]
    built.releases = add_release(built, built.version)  # type: ignore[attr-defined]
    return built


@pytest.fixture(scope="module")
def client(home: Built) -> TestClient:
    return TestClient(create_app(discover(home.home)))


def _digests(home: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in home.glob("*.db")}


def test_every_page_and_its_json_twin(client: TestClient, home: Built) -> None:
    before = _digests(home.home)
    dev = home.devices["eu"][0]
    run = home.runs["eu"][0]
    first = client.get("/api/artifacts", params={"region": "eu"}).json()["table"]["items"][0]
    art = first["artifact"]["sha256"]
    paths = ["/", "/runs", f"/runs/eu/{run}", f"/runs/eu/{run}/rounds/3", "/devices",
             f"/devices/eu/{dev}", "/artifacts", f"/artifacts/eu/{art}", "/gate", "/global",
             f"/global/{home.version}", "/releases",  # type: ignore[attr-defined]
             f"/releases/{home.releases[0]}"]  # type: ignore[attr-defined]  # fmt: skip
    for path in paths:
        page = client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'none'" in page.headers["content-security-policy"]
        twin = client.get(f"/api{path}" if path != "/" else "/api/")
        assert twin.status_code == 200 and twin.headers["content-type"] == "application/json"
        assert client.get(path, params={"format": "json"}).json() == twin.json()
    overview = client.get("/api/").json()
    assert [(c["status"]["source"], c["status"]["status"]) for c in overview["chains"]] == [
        ("eu", "verified"), ("us", "verified"), ("coordinator", "verified")]  # fmt: skip
    assert _digests(home.home) == before  # nothing was written


def test_run_and_round_state_what_the_chain_says(client: TestClient, home: Built) -> None:
    run = home.runs["us"][0]
    data = client.get(f"/api/runs/us/{run}").json()
    assert data["rounds"] == home.rounds and data["summary"]["launched_by"].startswith("ops")
    assert data["config"] == {"rounds": home.rounds, "aggregator": "cc", "f": 1, "seed": 0}
    assert len(data["summary"]["config_sha256"]) == 64
    assert data["rejected_by_reason"] == {"revoked-device": home.rounds,
                                          "bad-signature": home.rounds}  # fmt: skip
    assert data["table"]["items"][0]["choice"] == "cc: clipped 1 of 4"
    assert data["summary"]["final_accuracy"] == pytest.approx(0.9)
    page = client.get(f"/runs/us/{run}").text
    assert page.count('class="point" data-series="val-acc"') == home.rounds
    rnd = client.get(f"/api/runs/us/{run}/rounds/2").json()
    clients = rnd["table"]["items"]
    assert len(clients) == len(home.devices["us"]) + 1
    revoked = [c for c in clients if c["reason"] == "revoked-device"]
    assert revoked[0]["claimed_device_id"] == home.devices["us"][-1]
    assert {c["fate"] for c in clients if c["verdict"] == "accepted"} == {"kept", "clipped"}


def test_tables_paginate_and_filter(client: TestClient, home: Built) -> None:
    run = home.runs["eu"][0]
    base = f"/api/runs/eu/{run}/rounds/1"
    page1 = client.get(base, params={"per_page": 2}).json()["table"]
    page3 = client.get(base, params={"per_page": 2, "page": 3}).json()["table"]
    assert (page1["total"], page1["pages"], len(page1["items"])) == (6, 3, 2)
    assert len(page3["items"]) == 2 and page3["items"][0] not in page1["items"]
    html = client.get(base.removeprefix("/api"), params={"per_page": 2, "page": 2}).text
    assert "page 2 of 3" in html and 'rel="next"' in html and 'rel="prev"' in html
    assert "per_page=2&amp;page=3" in html
    rejected = client.get(base, params={"verdict": "rejected"}).json()["table"]["items"]
    assert {c["reason"] for c in rejected} == {"revoked-device", "bad-signature"}
    assert client.get(base, params={"reason": "bad-signature"}).json()["table"]["total"] == 1
    assert client.get("/api/runs", params={"region": "us"}).json()["table"]["total"] == 1
    rounds = client.get(f"/api/runs/eu/{run}", params={"rejections": "none"}).json()["table"]
    assert rounds["total"] == 0  # every round refused the revoked device
    assert client.get(f"/api/runs/eu/{run}", params={"aggregated": "yes"}).json()["table"][
        "total"] == home.rounds  # fmt: skip
    assert client.get("/api/global", params={"region": "us"}).json()["table"]["total"] == 1
    assert client.get("/api/devices", params={"state": "revoked"}).json()["table"]["total"] == 2
    device = client.get(f"/api/devices/eu/{home.devices['eu'][0]}",
                        params={"verdict": "accepted"}).json()  # fmt: skip
    assert device["table"]["total"] == home.rounds and device["record"]["profile"] == "pi"
    revoked = client.get(f"/api/devices/eu/{home.devices['eu'][-1]}").json()["record"]
    assert revoked["revoked_reason"] == "lost phone" and len(revoked["revoked_by"]) == 64
    for params, words in (({"page": "x"}, "page must be a whole number"),
                          ({"per_page": "0"}, "per_page must be between 1 and 1000"),
                          ({"verdict": "maybe"}, "verdict must be one of")):  # fmt: skip
        bad = client.get(base, params=params)
        assert bad.status_code == 400 and words in bad.json()["error"]
    missing = client.get("/runs/eu/nope")
    assert missing.status_code == 404 and "no run &#39;nope&#39; in region eu" in missing.text


def test_lineage_from_the_global_version_back_to_the_devices(client, home: Built) -> None:
    data = client.get(f"/api/global/{home.version}").json()  # type: ignore[attr-defined]
    roots = {r["region"]: r for r in data["lineage"]["roots"]}
    assert set(roots) == {"eu", "us"}
    for region, root in roots.items():
        assert root["found"] and root["approved_by"] == ["carol"]
        [run] = root["runs"]
        assert run["run"] == home.runs[region][0]
        assert sorted(run["devices"]) == sorted(home.devices[region][:-1])  # not the revoked
    svg = client.get(f"/global/{home.version}").text  # type: ignore[attr-defined]
    assert svg.count('class="lineage-node"') == 1 + 2 + 2 + 8
    assert [c["verdict"] for c in data["candidates"]] == ["accepted", "accepted"]
    listed = client.get("/api/global", params={"verdict": "accepted", "per_page": 1}).json()
    assert listed["candidates"]["total"] == 2 and len(listed["candidates"]["items"]) == 1
    page = client.get("/global", params={"per_page": 1}).text
    assert "cpage=2" in page  # the decisions table pages on its own


def test_releases_checked_and_drawn_back_to_the_devices(client, home: Built,
                                                        tmp_path: Path) -> None:  # fmt: skip
    published, held = home.releases  # type: ignore[attr-defined]
    listed = client.get("/api/releases").json()
    assert listed["table"]["total"] == 6
    assert listed["channels"] == {"eu": "live", "us": "held at v1"}
    current = client.get("/api/releases", params={"state": "current"}).json()["table"]["items"]
    assert sorted((r["seq"], r["target"]["region"]) for r in current) == [
        (published, "eu"), (published, "eu"), (held, "us"), (held, "us")]  # fmt: skip
    assert client.get("/api/releases", params={"action": "held"}).json()["table"]["total"] == 2
    bad = client.get("/api/releases", params={"region": "mars"})
    assert bad.status_code == 400 and "region must be one of eu, us" in bad.json()["error"]
    data = client.get(f"/api/releases/{published}").json()
    assert data["ok"] and data["global_version"] == home.version  # type: ignore[attr-defined]
    states = {c["name"]: c["state"] for c in data["checks"]}
    assert states["lineage digest"] == "ok" and states["eu/phone: students.json"] == "ok"
    assert states["us/pi: distilled"] == "warn"  # no distillation event in this home
    roots = {r["region"]: r for r in data["lineage"]["roots"]}
    for region in ("eu", "us"):
        [run] = roots[region]["runs"]
        assert run["run"] == home.runs[region][0]
        assert sorted(run["devices"]) == sorted(home.devices[region][:-1])
    page = client.get(f"/releases/{published}").text
    assert page.count('class="lineage-node"') == 4 + 1 + 2 + 2 + 8  # students .. devices
    assert client.get("/api/releases/1").status_code == 404
    run = client.get(f"/api/runs/eu/{home.runs['eu'][0]}").json()
    [where] = run["shipped"]
    assert where["version"] == home.version  # type: ignore[attr-defined]
    assert [r["seq"] for r in where["releases"]] == [published, held]
    report = tmp_path / "r.html"
    write_report(discover(home.home), home.runs["eu"][0], "html", report)
    assert f"release event {published} published" in report.read_text()
    edited = tmp_path / "edited"
    shutil.copytree(home.home, edited)
    manifest = edited / "coordinator" / "students" / f"v{home.version}" / "students.json"  # type: ignore[attr-defined]
    doc = json.loads(manifest.read_text())
    doc["students"]["pi"]["sha256"] = "0" * 64
    manifest.write_text(json.dumps(doc))
    other = TestClient(create_app(discover(edited))).get(f"/api/releases/{published}").json()
    failed = sorted(c["name"] for c in other["checks"] if c["state"] == "bad")
    assert not other["ok"] and failed == ["eu/pi: students.json", "us/pi: students.json"]


def test_html_and_script_in_the_chain_are_escaped(client: TestClient, home: Built) -> None:
    run = home.runs["eu"][0]
    for path in (f"/runs/eu/{run}/rounds/1", "/runs"):
        page = client.get(path).text
        assert "<script>" not in page and "<img" not in page and "onerror=" not in page.replace(
            "onerror=&#34;", "")  # fmt: skip
    page = client.get(f"/runs/eu/{run}/rounds/1", params={"q": "script"}).text
    assert "&lt;script&gt;document.title=&#34;pwned&#34;&lt;/script&gt;" in page
    twin = client.get(f"/api/runs/eu/{run}/rounds/1", params={"q": "script"}).json()
    assert twin["table"]["items"][0]["detail"] == HOSTILE  # JSON carries it as data


def _raw(app, method: str, raw_path: bytes, headers: list | None = None) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
    """One request straight into the ASGI app, with the path bytes exactly as given."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    path = raw_path.split(b"?")[0].decode("latin-1")
    scope = {"type": "http", "method": method, "path": path, "raw_path": raw_path.split(b"?")[0],
             "query_string": raw_path.partition(b"?")[2], "headers": headers or [],
             "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 1),
             "client": ("127.0.0.1", 2), "root_path": ""}  # fmt: skip
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_writes_and_path_tricks_are_refused(client: TestClient, home: Built) -> None:
    for method in ("post", "put", "delete", "patch"):
        answer = client.request(method, "/runs", content=b"{}")
        assert answer.status_code == 405 and answer.headers["allow"] == "GET, HEAD"
    head = client.head("/runs")
    assert head.status_code == 200 and head.content == b""
    app = client.app
    for raw in (b"/static/../../../etc/passwd", b"/static/..%2f..%2fetc%2fpasswd",
                b"/static/%2e%2e/audit.css", b"/runs/eu/..", b"/static//etc/passwd",
                b"/static/audit.css%00.png", b"/static/..\\\\audit.css"):  # fmt: skip
        status, body = _raw(app, "GET", raw)
        assert status == 400 and b"path refused" in body, raw
    assert _raw(app, "GET", b"/static/audit.css")[0] == 200
    assert client.get("/static/passwd").status_code == 404
    assert path_refused(b"/runs/eu/eu-1/rounds/2") == ""


def test_the_token_is_required_when_set(home: Built) -> None:
    client = TestClient(create_app(discover(home.home), token=TOKEN))
    assert client.get("/").status_code == 401
    assert (
        client.get("/", headers={"Authorization": "Bearer wrong-token-xxxxxx"}).status_code == 401
    )
    assert client.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    first = client.get("/runs", params={"token": TOKEN})
    assert first.status_code == 200 and "HttpOnly" in first.headers["set-cookie"]
    assert client.get("/api/runs").status_code == 200  # the cookie now
    client.cookies.clear()
    assert client.get("/api/runs").status_code == 401
    with pytest.raises(UsageError, match="not loopback"):
        check_bind("0.0.0.0", 31001, None)
    check_bind("0.0.0.0", 31001, TOKEN)
    check_bind("::1", 31001, None)
    with pytest.raises(UsageError, match="REGION=URL"):
        parse_db_options(["postgresql://x"])
    elsewhere = "postgresql://auditor@db/coordinator"
    moved = {s.name: s for s in discover(home.home, parse_db_options([f"coordinator={elsewhere}"]))}
    assert moved["coordinator"].kind == "coordinator" and moved["coordinator"].url == elsewhere
    assert sorted(moved) == ["coordinator", "eu", "us"]


def test_a_chain_edited_by_sql_is_broken_at_that_event(home: Built, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "home"
    shutil.copytree(home.home, copy)
    with sqlite3.connect(copy / "region-eu.db") as db:
        seq = db.execute("SELECT seq FROM events WHERE kind = 'round.closed' ORDER BY seq "
                         "LIMIT 1 OFFSET 1").fetchone()[0]  # fmt: skip
        db.execute("UPDATE events SET payload = replace(payload, '\"aggregated\":true', "
                   "'\"aggregated\":false') WHERE seq = ?", (seq,))  # fmt: skip
    chains = TestClient(create_app(discover(copy))).get("/api/").json()["chains"]
    eu = chains[0]["status"]
    found = (eu["status"], eu["first_bad_seq"], eu["first_bad_kind"])
    assert found == ("broken", seq, "round.closed")
    assert chains[1]["status"]["status"] == "verified"
    published = home.releases[0]  # type: ignore[attr-defined]
    with sqlite3.connect(copy / "region-us.db") as db:  # payloads that are not JSON objects
        db.execute("UPDATE events SET payload = 'not json' WHERE seq = 3")
    with sqlite3.connect(copy / "coordinator.db") as db:
        db.execute("UPDATE events SET payload = '[1]' WHERE seq = ?", (published,))
    client = TestClient(create_app(discover(copy)))
    broken = {c["status"]["source"]: c["status"]["first_bad_seq"]
              for c in client.get("/api/").json()["chains"]}  # fmt: skip
    assert broken == {"eu": seq, "us": 3, "coordinator": published}
    assert client.get("/runs").status_code == 200 and client.get("/releases").status_code == 200


def test_report_html_is_self_contained_and_pdf_renders(home: Built, tmp_path: Path) -> None:
    run = home.runs["eu"][0]
    out = tmp_path / "r.html"
    data = write_report(discover(home.home), run, "html", out)
    html = out.read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?[a-z]+:""", html, re.I)  # no external ref
    assert "<script" not in html and "<link" not in html and "&lt;script&gt;" in html
    assert html.count('class="fates"') == home.rounds == data["rounds"]
    assert data["chain"].status == "verified" and data["chain"].signed_seq > 0
    assert data["summary"].config_sha256 in html and "verified against" in html
    chain = data["chain"]
    assert chain.checkpoint_size == chain.last_seq and chain.checkpoint_root in html
    assert f"\n{chain.checkpoint_size}\n" in chain.checkpoint_note  # origin, size, root, sig
    assert chain.checkpoint_note.splitlines()[2] in html
    pdf = tmp_path / "r.pdf"
    text = fedgate_cli("audit", "report", "--home", home.home, "--run", run, "--format", "pdf",
                       "--out", pdf)  # fmt: skip
    assert "chain verified" in text and pdf.read_bytes().startswith(b"%PDF-")
    assert pdf.stat().st_size > 10_000


def test_cli_views_fit_80_columns_and_say_what_figures_mean(home: Built) -> None:
    db = f"sqlite:///{home.home / 'region-eu.db'}"
    run = home.runs["eu"][0]
    show = fedgate_cli("audit", "show", "--db", db, "--run", run, "--round", "2")
    assert max(len(line) for line in show.splitlines()) <= 80 or "stacked" in show
    for device in home.devices["eu"]:
        assert device in show  # whole, never cut
    assert "0.3" in show and "…" not in show and "score" in show and "Krum score" in show
    assert "model" in show and re.search(r"model: [0-9a-f]{64}", show)
    rounds = fedgate_cli("audit", "rounds", "--db", db, "--run", run)
    assert "config digest" in rounds and "aggregator" in rounds and "cc" in rounds
    runs = fedgate_cli("audit", "runs", "--db", db)
    assert re.search(r"config\s+[0-9a-f]{64}", runs) and "val-acc" in runs
    assert json.loads(fedgate_cli("audit", "runs", "--db", db, "--json"))[0]["id"] == run

"""The network-enrollment verbs' faces: the token `enroll-token` prints (and its QR code), the
operator-local fallback, clear errors, and the device view's lines."""

from __future__ import annotations

import pytest
from enroll_kit import setup_region
from typer.testing import CliRunner

from fedgate.clients.device_view import DeviceView, round_line
from fedgate.enrollment_wire import ca_fingerprint, parse_token
from fedgate.server.trust.enroll_service import ca_der
from fedgate.server.trust.pki import region_tls


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("cli-home")
    setup_region(home, "eu")
    return home


def cli(*args: object, code: int = 0):
    from fedgate import cli as entry

    entry._register()
    result = CliRunner().invoke(entry.app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def test_enroll_token_prints_one_string_with_what_a_device_needs(home) -> None:
    out = cli("region", "enroll-token", "--region", "eu", "--home", home, "--url",
              "https://fleet.example.org:8445", "--ttl-hours", "2").stdout  # fmt: skip
    token = parse_token(out.splitlines()[0])
    assert token.url == "https://fleet.example.org:8445" and token.region == "eu"
    pem = region_tls(home, "eu").ca_cert.read_bytes()
    assert token.ca_sha256 == ca_fingerprint(ca_der(pem))
    assert token.secret.startswith("fgt_")


def test_enroll_token_draws_a_qr_code(home) -> None:
    out = cli("region", "enroll-token", "--region", "eu", "--home", home, "--url",
              "https://h:1", "--qr").stdout  # fmt: skip
    lines = out.splitlines()
    assert lines[0].startswith("fge1.")
    art = [line for line in lines[1:] if line.strip()]
    assert len(art) > 10 and any(ch in "".join(art) for ch in "█▀▄")


def test_without_a_service_enroll_token_prints_the_operator_local_secret(home) -> None:
    result = cli("region", "enroll-token", "--region", "eu", "--home", home)
    assert result.stdout.splitlines()[0].startswith("fgt_")
    assert "operator-local" in result.stderr and "--url" in result.stderr
    local = cli("region", "enroll-token", "--region", "eu", "--home", home, "--local",
                "--url", "https://h:1")  # fmt: skip
    assert local.stdout.startswith("fgt_")


def test_clear_errors_for_the_wrong_token_in_the_wrong_place(home, tmp_path) -> None:
    result = cli("client", "enroll", "--token", "fgt_abc", "--profile", "pi",
                 "--device-home", tmp_path / "d", "--home", home, code=2)  # fmt: skip
    assert "needs --region" in result.output
    result = cli("client", "enroll", "--token", "fge1.garbage", "--profile", "pi",
                 "--device-home", tmp_path / "d", code=1)  # fmt: skip
    assert "damaged" in result.output
    result = cli("region", "enroll-token", "--region", "eu", "--home", home,
                 "--url", "http://plain:80", code=2)  # fmt: skip
    assert "https://" in result.output
    result = cli("client", "status", "--device-home", tmp_path / "none", code=1)
    assert "not enrolled" in result.output


def test_the_device_view_says_the_cap_and_why_and_each_verdict_once() -> None:
    facts = dict(run="eu-1", round=3, examples=200, available=287, cap=200, profile="pi",
                 loss=0.41234)  # fmt: skip
    assert round_line(facts) == (
        "run eu-1 round 3: trained on 200 examples of 287 (the pi profile caps a round at 200), "
        "loss 0.4123"
    )
    assert "caps" not in round_line({**facts, "examples": 120, "available": 120})
    lines: list[str] = []
    view = DeviceView(lines.append)
    view.on_event("sent", {"run": "eu-1", "round": 3})
    view.on_event("sent", {"run": "eu-1", "round": 4})
    refused = {"run": "eu-1", "round": 4, "verdict": "rejected", "reason": "stale-round"}
    accepted = {"run": "eu-1", "round": 3, "verdict": "accepted", "reason": ""}
    answer = {"updates": [refused, accepted]}
    view.on_status(answer)
    view.on_status(answer)  # already reported: nothing new
    said = [line.split("] ", 1)[1] for line in lines]
    assert said[-2:] == [
        "run eu-1 round 4: update REFUSED by the region (stale-round)",
        "run eu-1 round 3: update accepted by the region",
    ]
    assert len(said) == 4
    view.on_log_line("INFO :      SuperNode ID: 4242")
    assert "connected to the region (node 4242)" in lines[-1] and view.connected.is_set()

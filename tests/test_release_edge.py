"""Signed releases (``server/release``) and the edge node (``clients/edge``) over a real HTTP
server on loopback: the whole flow for two regions with a rollback, every refusal (forged,
tampered, rollback, expired, another region or profile), interrupted and killed installs,
held and pinned channels, and a root rotation. The models are real ONNX students trained on
the digits (``release_kit``); the global versions are signed by the coordinator's key."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from release_kit import coordinator_home
from tuf.api.metadata import Metadata, TargetFile
from typer.testing import CliRunner

from fedgate import cli
from fedgate.clients.edge.channel import ReleaseRefused
from fedgate.clients.edge.node import INSTALL_STEPS, EdgeNode, InstallFailed
from fedgate.crash_points import PAUSE_AT, PAUSE_DIR
from fedgate.crypto import generate_key, sha256_hex
from fedgate.errors import EXIT_VERIFICATION, VerificationError
from fedgate.models.data import common_test_split
from fedgate.server.release.channels import channels, open_store
from fedgate.server.release.keys import RoleKey, load_online_keys
from fedgate.server.release.lifecycle import init_release, refresh_repository, rotate_root
from fedgate.server.release.publish import PublishError, publish_release, set_channel
from fedgate.server.release.repository import ReleaseRepository, lifetimes, now
from fedgate.server.release.serve import serve_releases
from fedgate.server.release.students import StudentDigestError, StudentsError

ENTRY = "import sys; from fedgate.cli import main; sys.argv[0] = 'fedgate'; main()"
TEST = common_test_split()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Global versions 1-3 with their students, and an initialised release repository."""
    root = tmp_path_factory.mktemp("release-base")
    ch = coordinator_home(root)
    for _ in range(3):
        ch.next_version()
    init_release(ch.home, root / "offline")
    return root


@dataclass
class World:
    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def root_json(self) -> Path:
        return self.home / "release" / "repository" / "metadata" / "1.root.json"

    @property
    def repo(self) -> ReleaseRepository:
        return ReleaseRepository(self.home)

    def node(self, name: str, url: str, region: str = "eu", profile: str = "phone") -> EdgeNode:
        return EdgeNode.init(self.root / name, self.root_json, url, region, profile)

    @contextmanager
    def serving(self) -> Iterator[str]:
        with serve_releases(self.home) as server:
            yield server.url


@pytest.fixture
def world(base: Path, tmp_path: Path) -> World:
    shutil.copytree(base, tmp_path / "w")
    return World(tmp_path / "w")


def accuracy(node: EdgeNode) -> float:
    return float(np.mean([p.cls for p in node.predict(TEST.x[:120])] == TEST.y[:120]))


def leftovers(node: EdgeNode) -> list[Path]:
    """Files an install left behind: downloads in staging, half-moved model directories."""
    staged = list(node.home.staging.iterdir()) if node.home.staging.exists() else []
    return staged + list(node.home.models.glob(".*.tmp"))


def refused(fn, reason: str) -> str:
    with pytest.raises(ReleaseRefused) as info:
        fn()
    assert info.value.reason == reason, str(info.value)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"refused ({reason})")
    return message


def run_cli(*args: object) -> tuple[int, str]:
    cli._register()
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    return result.exit_code, result.output


# ------------------------------------------------------------------------- the whole flow


def test_two_regions_sync_a_release_and_one_node_rolls_back(world: World) -> None:
    publish_release(world.home, 1, ["eu", "us"])
    with world.serving() as url:
        eu, us = world.node("eu-phone", url, "eu", "phone"), world.node("us-pi", url, "us", "pi")
        assert eu.sync().action == "installed" and us.sync().action == "installed"
        assert accuracy(eu) > 0.85 and accuracy(us) > 0.85
        assert eu.sync().action == "up-to-date"  # metadata only

        pub = publish_release(world.home, 2, ["eu", "us"])
        assert {t.path for t in pub.targets} == {"eu/phone.onnx", "eu/pi.onnx", "us/phone.onnx",
                                                  "us/pi.onnx"}  # fmt: skip
        res = eu.sync()
        assert (res.action, res.current.global_version, res.previous.global_version) == (
            "installed", 2, 1)  # fmt: skip
        assert us.sync().current.global_version == 2
        lineage = world.repo.targets().signed.targets["us/pi.onnx"].custom["fedgate"]
        assert us.home.state().current.lineage_digest == lineage["lineage_digest"]

        old, new = eu.rollback()
        assert (old.global_version, new.global_version) == (2, 1)
        assert accuracy(eu) > 0.85  # v1 serves again
        again = eu.sync()  # reports the rollback, does not re-install v2
        assert again.action == "skipped" and again.current.global_version == 1
        assert [(e["kind"], e["version"], e["previous"]) for e in again.reported] == [
            ("rolled-back", 1, 2)]  # fmt: skip
        assert eu.sync().reported == []
        status = eu.status().to_dict()
        assert status["installed"]["global_version"] == 1 and status["available"] == 2
        assert status["rolled_back_from"] == [2]

        publish_release(world.home, 3, ["eu"])  # a newer release supersedes the rollback
        assert eu.sync().current.global_version == 3
        assert us.sync().action == "up-to-date"  # us was not in this publish
    store = open_store(world.home)
    kinds = [e.kind for e in store.audit.events()]
    assert kinds.count("release.published") == 3
    code, out = run_cli("audit", "verify", "--coordinator", "--home", world.home, "--strict")
    assert code == 0, out


# ------------------------------------------------------------------------- refusals


def test_forged_metadata_is_refused_and_the_old_model_keeps_serving(world: World) -> None:
    publish_release(world.home, 1, ["eu"])
    with world.serving() as url:
        node = world.node("n", url)
        node.sync()
        before = node.predict(TEST.x[:20])
        # an attacker re-signs the whole chain with keys of its own
        attacker = {r: RoleKey(generate_key()) for r in ("targets", "snapshot", "timestamp")}
        repo = world.repo
        ts = repo.stage(repo.targets().signed.targets, attacker, lifetimes(), now())
        repo.write_timestamp(ts)
        message = refused(node.sync, "forged")
        assert "timestamp" in message
        assert node.predict(TEST.x[:20]) == before
        assert node.home.state().current.global_version == 1


def test_a_tampered_file_is_refused(world: World) -> None:
    publish_release(world.home, 1, ["eu"])
    with world.serving() as url:
        node = world.node("n", url)
        node.sync()
        publish_release(world.home, 2, ["eu"])
        target = world.repo.targets().signed.targets["eu/phone.onnx"]
        path = world.repo.targets_dir / "eu" / f"{target.hashes['sha256']}.phone.onnx"
        data = bytearray(path.read_bytes())
        data[-5] ^= 0xFF  # same length, one byte changed
        path.write_bytes(bytes(data))
        refused(node.sync, "tampered")
        assert node.home.state().current.global_version == 1
        path.write_bytes(bytes(data) + b"more")  # longer than signed
        refused(node.sync, "tampered")
        assert accuracy(node) > 0.85
        assert leftovers(node) == []


def test_replayed_old_metadata_and_an_older_release_are_refused(world: World) -> None:
    publish_release(world.home, 1, ["eu"])
    frozen = world.root / "frozen-metadata"
    shutil.copytree(world.repo.metadata_dir, frozen)
    publish_release(world.home, 2, ["eu"])
    with world.serving() as url:
        node = world.node("n", url)
        assert node.sync().current.global_version == 2
        # the server (or a mirror) goes back to the old, validly signed metadata
        shutil.rmtree(world.repo.metadata_dir)
        shutil.copytree(frozen, world.repo.metadata_dir)
        message = refused(node.sync, "rollback")
        assert "timestamp" in message
        # even a node that lost its metadata cache refuses a release older than installed
        for item in node.home.metadata.iterdir():
            shutil.rmtree(item) if item.is_dir() else item.unlink()
        message = refused(node.sync, "rollback")
        assert "global version 1, older than installed 2" in message
        assert node.home.state().current.global_version == 2


def test_expired_metadata_is_refused(world: World) -> None:
    publish_release(world.home, 1, ["eu"])
    with world.serving() as url:
        node = world.node("n", url)
        node.sync()
        # a frozen repository: what it serves is validly signed but past its expiry
        publish_release(world.home, 2, ["eu"], lifetime_overrides={"timestamp": timedelta(-1)})
        assert "expired" in refused(node.sync, "expired")
        assert "expired" in refused(world.node("fresh", url).sync, "expired")
        assert node.home.state().current.global_version == 1
        assert refresh_repository(world.home) == {"timestamp"}  # the server re-signs
        assert node.sync().current.global_version == 2


@pytest.mark.parametrize("field", ["region", "profile"])
def test_a_release_signed_for_another_region_or_profile_is_refused(
    world: World, field: str
) -> None:
    publish_release(world.home, 1, ["eu", "us"])
    repo = world.repo
    targets = dict(repo.targets().signed.targets)
    other = targets["us/phone.onnx" if field == "region" else "eu/pi.onnx"]
    targets["eu/phone.onnx"] = TargetFile(other.length, dict(other.hashes), "eu/phone.onnx",
                                          {"custom": other.custom})  # fmt: skip
    repo.write_timestamp(repo.stage(targets, load_online_keys(world.home), lifetimes(), now()))
    with world.serving() as url:
        message = refused(world.node("n", url).sync, "wrong")
        assert "this node is eu/phone" in message


# ------------------------------------------------------------------------- atomic install


def test_a_failure_at_each_install_step_leaves_the_old_model_serving(world: World) -> None:
    publish_release(world.home, 1, ["eu"])
    with world.serving() as url:
        node = world.node("n", url)
        node.sync()
        before = node.predict(TEST.x[:30])
        publish_release(world.home, 2, ["eu"])
        for step in INSTALL_STEPS[:-1]:

            def full_disk(at: str, step: str = step) -> None:
                if at == step:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            node.on_step = full_disk
            with pytest.raises(InstallFailed) as info:
                node.sync()
            assert "v1 keeps serving" in str(info.value) and "No space left" in str(info.value)
            assert node.home.state().current.global_version == 1, step
            assert node.predict(TEST.x[:30]) == before, step
        node.on_step = None
        assert node.sync().current.global_version == 2
        assert leftovers(node) == []


def test_a_model_directory_left_by_a_stopped_sync_is_reused_only_if_intact(world: World) -> None:
    """A sync stopped after writing ``models/<v>/`` and before its commit leaves that directory;
    the next sync keeps it only if both files are what it would write (a crash may cut a file
    short before its fsync), else writes it again."""
    publish_release(world.home, 1, ["eu"])
    with world.serving() as url:
        node = world.node("n", url)
        node.sync()
        publish_release(world.home, 2, ["eu"])

        def stop(at: str) -> None:
            if at == "unpacked":
                raise OSError(errno.EIO, os.strerror(errno.EIO))

        node.on_step = stop
        with pytest.raises(InstallFailed):
            node.sync()
        node.on_step = None
        (left,) = [d for d in node.home.models.iterdir() if d.name.startswith("v2-")]
        expected = (left / "release.json").read_bytes()
        (left / "release.json").write_bytes(expected[:20])  # cut short
        assert node.sync().current.model_dir == left.name
        assert (left / "release.json").read_bytes() == expected


def test_the_new_model_directory_is_durable_before_state_names_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Crash safety: the new model's files, its directory and the rename of that directory
    into ``models/`` are fsynced before ``state.json``, the one commit point, names it (before
    the rename that puts the new ``state.json`` in place)."""
    import fedgate.atomic_file as atomic_mod

    publish_release(world.home, 1, ["eu"])
    with world.serving() as url:
        node = world.node("n", url)
        order: list[tuple[str, str]] = []
        real_fsync_dir, real_fsync, real_replace = atomic_mod.fsync_dir, os.fsync, os.replace

        def fsync_dir(directory: Path) -> None:
            order.append(("fsync", Path(directory).name))
            real_fsync_dir(directory)

        def fsync(fd: int) -> None:
            with contextlib.suppress(OSError):  # the file's name, where /proc tells it
                order.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")).name))
            real_fsync(fd)

        def replace(src, dst) -> None:
            if Path(dst).name == "state.json":
                current = json.loads(Path(src).read_text()).get("current") or {}
                order.append(("state", current.get("model_dir", "")))
            real_replace(src, dst)

        monkeypatch.setattr(atomic_mod, "fsync_dir", fsync_dir)
        monkeypatch.setattr(atomic_mod.os, "fsync", fsync)
        monkeypatch.setattr(atomic_mod.os, "replace", replace)
        installed = node.sync().current
    commit = order.index(("state", installed.model_dir))
    assert ("fsync", "models") in order[:commit], order
    assert ("fsync", installed.model_dir) in order[:commit], order
    if Path("/proc/self/fd").is_dir():
        assert {("fsync", "model.onnx"), ("fsync", "release.json")} <= set(order[:commit]), order


def test_a_killed_sync_leaves_the_old_model_serving(world: World) -> None:
    publish_release(world.home, 1, ["eu"])
    with world.serving() as url:
        node = world.node("n", url)
        node.sync()
        publish_release(world.home, 2, ["eu"])
        pause = world.root / "pause"
        pause.mkdir()
        env = {**os.environ, PAUSE_AT: "loaded", PAUSE_DIR: str(pause)}
        proc = subprocess.Popen(
            [sys.executable, "-c", ENTRY, "edge", "sync", "--edge-home", str(node.home.root)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        end = time.monotonic() + 120
        while not (pause / "loaded.reached").exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < end, "the sync never reached its install's load step"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # killed after the new model loaded, before commit
        proc.wait(timeout=30)
        proc.stdout.close()  # type: ignore[union-attr]
        assert node.home.state().current.global_version == 1
        assert accuracy(node) > 0.85
        assert node.sync().current.global_version == 2  # the next sync completes it


def test_a_model_that_answers_its_probe_wrongly_is_not_installed(world: World) -> None:
    publish_release(world.home, 1, ["eu"])
    repo = world.repo
    targets = dict(repo.targets().signed.targets)
    t = targets["eu/phone.onnx"]
    custom = json.loads(json.dumps(t.custom))
    custom["fedgate"]["probe"]["classes"] = [(c + 1) % 10 for c in custom["fedgate"]["probe"][
        "classes"]]  # fmt: skip
    targets["eu/phone.onnx"] = TargetFile(t.length, dict(t.hashes), t.path, {"custom": custom})
    repo.write_timestamp(repo.stage(targets, load_online_keys(world.home), lifetimes(), now()))
    with world.serving() as url:
        node = world.node("n", url)
        with pytest.raises(Exception, match="probe") as info:
            node.sync()
        assert info.value.exit_code == EXIT_VERIFICATION  # type: ignore[attr-defined]
        assert node.home.state().current is None


# ------------------------------------------------------------------------- channels and keys


def test_held_and_pinned_channels(world: World) -> None:
    publish_release(world.home, 1, ["eu", "us"])
    with world.serving() as url:
        eu, us = world.node("eu", url, "eu"), world.node("us", url, "us")
        eu.sync(), us.sync()
        set_channel(world.home, "eu", "held")
        pub = publish_release(world.home, 2, ["eu", "us"])
        assert pub.skipped == {"eu": "held at v1"}
        assert eu.sync().action == "up-to-date" and eu.home.state().current.channel == "held"
        assert us.sync().current.global_version == 2
        set_channel(world.home, "us", "pinned", 1)  # an operator pins us back to v1
        kept = us.sync()
        assert (kept.action, kept.current.global_version) == ("kept", 2)
        fresh = world.node("us-new", url, "us")
        assert fresh.sync().current.global_version == 1  # a new node gets the pinned version
        with pytest.raises(PublishError, match="nothing published"):
            publish_release(world.home, 3, ["eu", "us"])
        set_channel(world.home, "eu", "live")
        assert publish_release(world.home, 3, ["eu", "us"]).skipped == {"us": "pinned at v1"}
        assert eu.sync().current.global_version == 3
        with pytest.raises(PublishError, match="already at v3"):
            publish_release(world.home, 2, ["eu"])
    chans = channels(open_store(world.home))
    assert (chans["eu"].state, chans["us"].describe()) == ("live", "pinned at v1")
    code, out = run_cli("audit", "verify", "--coordinator", "--home", world.home, "--strict")
    assert code == 0, out


def test_root_rotation_is_followed_and_old_online_keys_are_refused(world: World) -> None:
    publish_release(world.home, 1, ["eu"])
    old_keys = load_online_keys(world.home)
    with world.serving() as url:
        node = world.node("n", url)
        node.sync()
        offline, offline2 = world.root / "offline", world.root / "offline-2"
        versions = rotate_root(world.home, offline, new_root_dir=offline2, rotate_online=True)
        assert versions.root == 2
        publish_release(world.home, 2, ["eu"])
        assert node.sync().current.global_version == 2  # followed root v1 -> v2
        assert (
            Metadata.from_bytes(
                (node.home.metadata / "root_history" / "2.root.json").read_bytes()
            ).signed.version
            == 2
        )
        repo = world.repo  # the replaced online keys sign what the new root no longer trusts
        repo.write_timestamp(
            repo.stage(repo.targets().signed.targets, old_keys, lifetimes(), now())
        )
        refused(node.sync, "forged")
    with pytest.raises(Exception, match="not this repository's root key"):
        rotate_root(world.home, world.root / "offline")  # the retired root key


def test_release_serve_is_ready_when_it_says_so_and_stops_on_ctrl_c(world: World) -> None:
    from fedgate.server.launch.processes import free_port_block

    port = free_port_block(1)
    proc = subprocess.Popen(
        [sys.executable, "-c", ENTRY, "release", "serve", "--home", str(world.home), "--port",
         str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert f"serving releases at http://127.0.0.1:{port}" in line, line
        url = f"http://127.0.0.1:{port}/metadata/timestamp.json"
        with urllib.request.urlopen(url, timeout=30) as r:
            assert Metadata.from_bytes(r.read()).signed.type == "timestamp"
        for path in ("/", "/metadata/", "/../keys/targets.key", "/release/keys/targets.key"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30)
            assert info.value.code == 404, path
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out


def test_publish_checks_the_students_and_their_global_version(world: World) -> None:
    manifest = world.home / "coordinator" / "students" / "v1" / "students.json"
    good = manifest.read_text()

    def publish_with(edit) -> None:
        doc = json.loads(good)
        edit(doc)
        manifest.write_text(json.dumps(doc))
        publish_release(world.home, 1, ["eu"])

    with pytest.raises(StudentDigestError, match="differs from students"):
        publish_with(lambda d: d["students"]["phone"].update(sha256="0" * 64))
    with pytest.raises(VerificationError, match="names lineage"):
        publish_with(lambda d: d.update(statement_sha256="1" * 64))
    with pytest.raises(StudentsError, match="format"):
        publish_with(lambda d: d.update(format="other/v9"))
    with pytest.raises(StudentsError, match="declares input"):
        publish_with(lambda d: d["students"]["pi"].update(input_name="pixels"))
    with pytest.raises(PublishError, match="global version 7 is not recorded"):
        publish_release(world.home, 7, ["eu"])
    # distillation's record in the chain names the manifest it wrote: another one is refused
    store = open_store(world.home)
    store.audit.append_many(
        [("distill.students", {"version": 1, "manifest": sha256_hex(good.encode())})], sign=True
    )
    with pytest.raises(VerificationError, match="not the manifest distillation recorded"):
        publish_with(lambda d: d.update(students=list(d["students"].values())))
    assert world.repo.targets().signed.targets == {}  # nothing was published
    manifest.write_text(good)
    publish_release(world.home, 1, ["eu"])
    assert set(world.repo.targets().signed.targets) == {"eu/phone.onnx", "eu/pi.onnx"}
    # a list of entries is read as well as a mapping (version 2 has no distillation record)
    manifest2 = manifest.parent.parent / "v2" / "students.json"
    doc = json.loads(manifest2.read_text())
    manifest2.write_text(json.dumps({**doc, "students": list(doc["students"].values())}))
    assert {t.global_version for t in publish_release(world.home, 2, ["eu"]).targets} == {2}


def test_the_root_key_is_kept_apart_from_the_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with pytest.raises(Exception, match="inside the home"):
        init_release(home, home / "root")
    assert not (home / "release" / "repository").exists()


# ------------------------------------------------------------------------- command line


def test_the_verbs_end_to_end(world: World, tmp_path: Path) -> None:
    from PIL import Image

    code, out = run_cli("release", "publish", "--global-version", 1, "--regions", "eu,us",
                        "--home", world.home, "--json")  # fmt: skip
    assert code == 0, out
    assert {t["path"] for t in json.loads(out.splitlines()[-1])["targets"]} >= {"eu/phone.onnx"}
    edge = tmp_path / "edge"
    with world.serving() as url:
        code, out = run_cli("edge", "init", "--root", world.root_json, "--url", url,
                            "--region", "eu", "--profile", "pi", "--edge-home", edge)  # fmt: skip
        assert code == 0, out
        code, out = run_cli("edge", "sync", "--edge-home", edge)
        assert code == 0 and "installed v1" in out, out
        np.savez(tmp_path / "x.npz", x=TEST.x[:3])
        code, out = run_cli("edge", "predict", tmp_path / "x.npz", "--edge-home", edge, "--json")
        assert code == 0, out
        preds = json.loads(out)["predictions"]
        assert len(preds) == 3 and all(0 <= p["class"] <= 9 for p in preds)
        for suffix in ("png", "pgm"):
            image = tmp_path / f"digit.{suffix}"
            pixels = (TEST.x[0].reshape(8, 8) * 255).round().astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(image)
            code, out = run_cli("edge", "predict", image, "--edge-home", edge)
            assert code == 0 and f"class {preds[0]['class']} (p=" in out, out
        bad = tmp_path / "bad.npz"
        np.savez(bad, x=TEST.x[:2] * 16)
        code, out = run_cli("edge", "predict", bad, "--edge-home", edge)
        assert code == 1 and "values must lie in [0, 1]" in out and len(out.splitlines()) == 1
        code, out = run_cli("release", "hold", "--region", "eu", "--home", world.home)
        assert code == 0 and "held eu/pi.onnx" in out, out
        code, out = run_cli("edge", "status", "--edge-home", edge, "--json")
        status = json.loads(out)
        assert (status["installed"]["global_version"], status["available"], status["channel"]) == (
            1, 1, "held")  # fmt: skip
        code, out = run_cli("edge", "rollback", "--edge-home", edge)
        assert code == 1 and "no previous version" in out
        target = world.repo.targets().signed.targets["eu/pi.onnx"]
        (world.repo.targets_dir / "eu" / f"{target.hashes['sha256']}.pi.onnx").write_bytes(b"x")
        shutil.rmtree(edge / "models")  # force a re-download: the node has lost its model
        (edge / "state.json").unlink()
        code, out = run_cli("edge", "sync", "--edge-home", edge)
        assert code == EXIT_VERIFICATION and "refused (tampered)" in out, out
    code, out = run_cli("release", "status", "--home", world.home, "--json")
    assert code == 0 and json.loads(out)["channels"] == {"eu": "held at v1"}
    code, out = run_cli("edge", "sync", "--edge-home", edge)  # the server is gone
    assert code == 3 and "unreachable" in out, out

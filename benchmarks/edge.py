"""Edge speed: a node's sync as a ratio to one plain HTTP GET of the same bytes, and predict
latency per sample of each student (onnxruntime) against the teacher in torch.

A coordinator home with signed global versions and their students is made as the tests make it
(``tests/release_kit.py``: students trained on the digits, built with ``onnx.helper``; with
``--hidden H`` MLP students of that width, for a size sweep); its release repository is served
by ``serve_releases`` on loopback. Measured in the same run, alternating, median of
``--repeats``:

* new release: an ``EdgeNode`` on v1 syncs v2 (TUF refresh: timestamp, snapshot, targets;
  download and digest check; onnxruntime load and probe; atomic commit). Each repeat restores
  the node's home as it was on v1 (outside the timing).
* unchanged: the node on v2 syncs again (metadata only: the next root's 404 and the timestamp).
* phases of the new-release sync: until ``downloaded`` (TUF refresh + download + digest),
  ``unpacked`` (move + fsync), ``loaded`` (onnxruntime session), ``probed``, ``committed``
  (``state.json`` replaced atomically).
* floor: the same requests the sync makes (next root's 404, timestamp; for a new release also
  snapshot, targets, student) on one keep-alive connection, with no verification or disk
  write: what the TUF protocol costs by itself, as a ratio to the GET (``floor``).
* required: the floor's requests plus the local work no TUF client that installs crash-safely
  can skip, each done once with nothing else: parse the three new roles and verify each with its
  delegator's key (``tuf.api.metadata``: canonical JSON + Ed25519, against a root and targets
  already in memory), check the student's length and SHA-256, load it in onnxruntime and answer
  the release's probe, write it to a file, fsync it, rename it and fsync the directory. Its
  ratio to the GET (``required``) is a lower bound for any sync that keeps every check: when it
  is above the goal, so is every conforming sync on this machine.
* baseline: one GET (``urllib.request``) of a file of exactly the bytes that sync fetched.

``ratio`` = sync / GET. Goal for a new release: <= 3. Predict: median per-sample latency at
batch 1 over ``--samples`` digits, one thread each (an edge device's setting), for every
student through ``EdgeNode.predict`` (what a device calls) and its bare ``session.run``, and
for the teachers (``--teacher``, models/ architectures in torch; latency does not depend on
their weights' values).

    python benchmarks/edge.py [--repeats 7] [--hidden 0 256 4096] [--samples 300] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from tuf.api.metadata import Metadata

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the release kit the tests use (students, versions)

from release_kit import PROFILES, coordinator_home  # noqa: E402

from fedgate.clients.edge.node import INSTALL_STEPS, EdgeNode  # noqa: E402
from fedgate.clients.edge.runtime import Student  # noqa: E402
from fedgate.models.data import common_test_split  # noqa: E402
from fedgate.release_targets import ReleaseTarget  # noqa: E402
from fedgate.server.release.lifecycle import init_release  # noqa: E402
from fedgate.server.release.publish import publish_release  # noqa: E402
from fedgate.server.release.repository import ReleaseRepository  # noqa: E402
from fedgate.server.release.serve import serve_releases  # noqa: E402

GOAL = 3.0


def _timed(fn: Any, *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=30) as r:
        return len(r.read())


def _sync_requests(repo: ReleaseRepository, base: str, new: bool) -> list[str]:
    """The URLs a sync requests, in order: the next root (404), the timestamp, and for a new
    release the snapshot, the targets and the student."""
    root_next = repo.latest_version("root") + 1
    urls = [f"{base}/metadata/{root_next}.root.json", f"{base}/metadata/timestamp.json"]
    if new:
        target = repo.targets().signed.targets["eu/phone.onnx"]
        urls += [
            f"{base}/metadata/{repo.latest_version('snapshot')}.snapshot.json",
            f"{base}/metadata/{repo.latest_version('targets')}.targets.json",
            f"{base}/targets/eu/{target.hashes['sha256']}.phone.onnx",
        ]
    return urls


def _same_requests(urls: list[str]) -> int:
    """The sync's requests without any verification or disk write, on one keep-alive
    connection (urllib3): the protocol's floor."""
    import urllib3

    pool = urllib3.PoolManager(retries=False)
    return sum(len(pool.request("GET", url).data) for url in urls)


def _fetch_all(urls: list[str]) -> list[bytes]:
    """The bodies of ``urls`` on one keep-alive connection (a 404's body included)."""
    import urllib3

    pool = urllib3.PoolManager(retries=False)
    return [pool.request("GET", url).data for url in urls]


def _required(root: Any, urls: list[str], scratch: Path) -> None:
    """A new-release sync's requests and the local work every crash-safe, fully checking TUF
    client must do (module docstring, ``required``), given the trusted ``root`` already in
    memory; raises if a check fails."""
    _, ts_raw, snap_raw, targets_raw, student = _fetch_all(urls)
    ts, snap = Metadata.from_bytes(ts_raw), Metadata.from_bytes(snap_raw)
    targets = Metadata.from_bytes(targets_raw)
    root.verify_delegate("timestamp", ts)
    root.verify_delegate("snapshot", snap)
    root.verify_delegate("targets", targets)
    target = targets.signed.targets["eu/phone.onnx"]
    if len(student) != target.length or (
        hashlib.sha256(student).hexdigest() != target.hashes["sha256"]
    ):
        raise RuntimeError("the student's length or digest does not match its target")
    release = ReleaseTarget.from_custom(target.custom)
    Student(student, release.input_name, release.input_shape).answer_probe(release.probe)
    tmp, final = scratch / "student.tmp", scratch / "student.onnx"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, student)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    dfd = os.open(scratch, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _fetched(repo: ReleaseRepository, new: bool) -> int:
    """Bytes a sync downloads: the timestamp, and for a new release the snapshot, targets and
    the student (the next root's 404 is left out: it carries no content)."""
    md = repo.metadata_dir
    total = (md / "timestamp.json").stat().st_size
    if new:
        total += (md / f"{repo.latest_version('snapshot')}.snapshot.json").stat().st_size
        total += (md / f"{repo.latest_version('targets')}.targets.json").stat().st_size
        total += repo.targets().signed.targets["eu/phone.onnx"].length
    return total


def sync_run(hidden: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fg-bench-edge-") as tmp:
        root = Path(tmp)
        ch = coordinator_home(root, hidden)
        ch.next_version(), ch.next_version()
        init_release(ch.home, root / "offline")
        publish_release(ch.home, 1, ["eu"])
        repo = ReleaseRepository(ch.home)
        with serve_releases(ch.home) as server:
            node = EdgeNode.init(root / "edge", repo.root_json_path(), server.url, "eu", "phone")
            node.sync()
            on_v1 = root / "edge-on-v1"
            shutil.copytree(node.home.root, on_v1)
            publish_release(ch.home, 2, ["eu"])
            new_bytes, same_bytes = _fetched(repo, True), _fetched(repo, False)
            student = repo.targets().signed.targets["eu/phone.onnx"].length
            for name, size in (("new.bin", new_bytes), ("same.bin", same_bytes)):
                (repo.root_dir / "targets" / name).write_bytes(np.random.bytes(size))
            new_url, same_url = f"{server.url}/targets/new.bin", f"{server.url}/targets/same.bin"
            _get(new_url), _get(same_url)  # warm
            new_urls = _sync_requests(repo, server.url, True)
            same_urls = _sync_requests(repo, server.url, False)
            new_s, same_s, get_new, get_same, floor_new, floor_same = [], [], [], [], [], []
            required_new: list[float] = []
            trusted_root = Metadata.from_file(str(repo.root_json_path()))
            scratch = root / "required"
            scratch.mkdir()
            phases: dict[str, list[float]] = {step: [] for step in INSTALL_STEPS}
            for _ in range(repeats):
                shutil.rmtree(node.home.root)
                shutil.copytree(on_v1, node.home.root)
                marks: dict[str, float] = {}
                node.on_step = lambda step, marks=marks: marks.setdefault(step, time.perf_counter())
                start = time.perf_counter()
                node.sync()
                new_s.append(time.perf_counter() - start)
                node.on_step = None
                last = start
                for step in INSTALL_STEPS:
                    phases[step].append(marks[step] - last)
                    last = marks[step]
                get_new.append(_timed(_get, new_url))
                floor_new.append(_timed(_same_requests, new_urls))
                required_new.append(_timed(_required, trusted_root, new_urls, scratch))
                same_s.append(_timed(node.sync))
                get_same.append(_timed(_get, same_url))
                floor_same.append(_timed(_same_requests, same_urls))
            assert node.home.state().current.global_version == 2  # type: ignore[union-attr]
    n, s, gn, gs, fn, fs = (
        statistics.median(v) for v in (new_s, same_s, get_new, get_same, floor_new, floor_same)
    )
    return {
        "student_bytes": student, "new_bytes": new_bytes, "same_bytes": same_bytes,
        "new_sync_s": n, "new_get_s": gn, "new_ratio": n / gn,
        "same_sync_s": s, "same_get_s": gs, "same_ratio": s / gs,
        "new_requests_s": fn, "new_floor_ratio": fn / gn,
        "same_requests_s": fs, "same_floor_ratio": fs / gs,
        "required_s": statistics.median(required_new),
        "required_ratio": statistics.median(required_new) / gn,
        "hidden": hidden, "goal": GOAL,
        "phases_ms": {k: 1000 * statistics.median(v) for k, v in phases.items()},
    }  # fmt: skip


def predict_run(samples: int, teacher_archs: list[str]) -> list[dict[str, Any]]:
    import torch

    from fedgate.models.nets import build_model

    torch.set_num_threads(1)
    x = common_test_split().x[:samples]
    rows = []
    with tempfile.TemporaryDirectory(prefix="fg-bench-edge-") as tmp:
        root = Path(tmp)
        ch = coordinator_home(root)
        ch.next_version()
        init_release(ch.home, root / "offline")
        publish_release(ch.home, 1, ["eu"])
        with serve_releases(ch.home) as server:
            for profile in PROFILES:
                node = EdgeNode.init(
                    root / profile, ReleaseRepository(ch.home).root_json_path(), server.url,
                    "eu", profile,
                )  # fmt: skip
                node.sync()
                node.predict(x[:5])  # load and warm
                times = [_timed(node.predict, row[None, :]) for row in x]
                size = node.home.model_path(node.home.state().current).stat().st_size  # type: ignore[arg-type]
                rows.append({"model": f"student {profile}: EdgeNode.predict", "bytes": size,
                             "latency_ms": 1000 * statistics.median(times)})  # fmt: skip
                student = node._student[1]  # type: ignore[index]  # the session predict loaded
                name = student.input_name
                times = [_timed(student.session.run, None, {name: row[None, :]}) for row in x]
                rows.append({"model": f"student {profile}: session.run", "bytes": size,
                             "latency_ms": 1000 * statistics.median(times)})  # fmt: skip
    for arch in teacher_archs:
        teacher = build_model(arch).eval()
        with torch.no_grad():
            xt = torch.from_numpy(x)
            teacher(xt[:5])
            times = [_timed(teacher, xt[i : i + 1]) for i in range(len(xt))]
        params = sum(p.numel() for p in teacher.parameters())
        rows.append({"model": f"teacher {arch}: torch forward", "bytes": 4 * params,
                     "latency_ms": 1000 * statistics.median(times)})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=[0, 256, 4096],
        help="student widths to sweep (0: the softmax-regression students)",
    )
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--teacher", nargs="+", default=["mlp-64-32-10", "cnn-small-v1"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    syncs = [sync_run(h, args.repeats) for h in args.hidden]
    cols = [
        ("hidden", "hidden", 6, "d", 1),
        ("student B", "student_bytes", 9, "d", 1),
        ("fetched B", "new_bytes", 9, "d", 1),
        ("new sync ms", "new_sync_s", 11, ".1f", 1000),
        ("GET ms", "new_get_s", 7, ".2f", 1000),
        ("ratio", "new_ratio", 6, ".1f", 1),
        ("same B", "same_bytes", 6, "d", 1),
        ("same sync ms", "same_sync_s", 12, ".1f", 1000),
        ("GET ms", "same_get_s", 7, ".2f", 1000),
        ("ratio", "same_ratio", 6, ".1f", 1),
        ("floor new", "new_floor_ratio", 9, ".1f", 1),
        ("floor same", "same_floor_ratio", 10, ".1f", 1),
        ("required ms", "required_s", 11, ".1f", 1000),
        ("required", "required_ratio", 8, ".1f", 1),
    ]
    print(" ".join(f"{title:>{w}}" for title, _, w, _, _ in cols))
    for r in syncs:
        print(" ".join(f"{r[key] * k:>{w}{fmt}}" for _, key, w, fmt, k in cols))
    print("\nnew-release sync by phase, ms (metadata+download ends at 'downloaded'):")
    for r in syncs:
        print(f"  hidden {r['hidden']:>5}: " + ", ".join(
            f"{step} {ms:.1f}" for step, ms in r["phases_ms"].items()))  # fmt: skip
    preds = predict_run(args.samples, args.teacher)
    print(f"\n{'model':<40} {'bytes':>9} {'ms/sample':>10}")
    for p in preds:
        print(f"{p['model']:<40} {p['bytes']:>9} {p['latency_ms']:>10.3f}")
    if args.json:
        args.json.write_text(json.dumps({"sync": syncs, "predict": preds}, indent=2) + "\n")
    return 0 if all(r["new_ratio"] <= GOAL for r in syncs) else 1


if __name__ == "__main__":
    sys.exit(main())

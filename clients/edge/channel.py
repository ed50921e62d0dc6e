"""The edge node's view of the release channel through ``tuf.ngclient``, and the one place that
turns what TUF or the release's own fields refuse into a one-line reason.

The ``Updater`` is bootstrapped from the root metadata the node was provisioned with
(``trust/root.json``) on every sync; newer roots are followed only along the chain that root
signs. Each refusal is a ``ReleaseRefused`` (exit 2) with a short ``reason``:

========== ==================================================================================
forged     metadata not signed by the keys the trusted root names (``UnsignedMetadataError``)
tampered   a file that does not match the length or digest its signed metadata states
rollback   metadata older than what the node already trusts, or a release older than installed
expired    metadata past its expiry: a freeze attack, or a repository nobody re-signs
wrong      a release whose signed fields name another region or profile than this node's
invalid    anything else the repository serves that TUF or fedgate cannot accept
========== ==================================================================================
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater, UpdaterConfig

from fedgate.errors import UnavailableError, VerificationError
from fedgate.release_targets import MalformedRelease, ReleaseTarget, target_path

from .fetcher import fetcher_for
from .state import EdgeConfig, EdgeHome

USER_AGENT = "fedgate-edge"
REASONS = ("forged", "tampered", "rollback", "expired", "wrong", "invalid")


class ReleaseRefused(VerificationError):
    """The release channel offered something this node must not install."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"refused ({reason}): {message}")
        self.reason = reason


class ReleaseServerUnavailable(UnavailableError):
    """The release server cannot be reached or has nothing for this node."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _cause(exc: BaseException) -> str:
    """The network's own reason under a TUF download error (e.g. ``Connection refused``)."""
    reason = getattr(exc.__cause__, "reason", None) or exc.__cause__ or exc
    return _first_line(reason).rpartition(": ")[2] or type(reason).__name__


@contextmanager
def refusals(url: str) -> Iterator[None]:
    """Map TUF's and the network's failures to ``ReleaseRefused`` / unavailable, one line each."""
    try:
        yield
    except tuf_errors.UnsignedMetadataError as exc:
        raise ReleaseRefused(
            "forged", f"metadata is not signed by the trusted keys ({_first_line(exc)})"
        ) from None
    except tuf_errors.ExpiredMetadataError as exc:
        raise ReleaseRefused(
            "expired", f"{_first_line(exc)}: stale metadata (freeze attack?) is not trusted"
        ) from None
    except tuf_errors.BadVersionNumberError as exc:
        raise ReleaseRefused(
            "rollback", f"{_first_line(exc)}: older metadata than this node trusts"
        ) from None
    except (tuf_errors.LengthOrHashMismatchError, tuf_errors.DownloadLengthMismatchError) as exc:
        raise ReleaseRefused(
            "tampered", f"a downloaded file does not match its signed digest ({_first_line(exc)})"
        ) from None
    except tuf_errors.RepositoryError as exc:
        raise ReleaseRefused("invalid", _first_line(exc)) from None
    except tuf_errors.DownloadHTTPError as exc:
        raise ReleaseServerUnavailable(
            f"release server {url}: {_first_line(exc)} (is it serving a repository?)"
        ) from None
    except tuf_errors.SlowRetrievalError as exc:
        raise ReleaseServerUnavailable(
            f"release server {url} unreachable or too slow ({_cause(exc)})"
        ) from None
    except tuf_errors.DownloadError as exc:
        raise ReleaseServerUnavailable(f"release server {url}: {_first_line(exc)}") from None
    except OSError:
        raise  # local files (disk full, permissions): the caller names what it was doing
    except Exception as exc:
        import urllib3  # only here: urllib3's errors when the server cannot be reached

        if isinstance(exc, urllib3.exceptions.HTTPError):
            raise ReleaseServerUnavailable(
                f"release server {url} unreachable ({type(exc).__name__})"
            ) from None
        raise


class NodeUpdater(Updater):
    """tuf's ``Updater``, minus two disk writes a sync repeated for nothing: on every start it
    rewrote ``root_history/<v>.root.json`` with the bootstrap root and re-made the ``root.json``
    symlink (twice a sync), even when both already were what it was about to write. Now each
    is written only when it differs; what is trusted, and every check, are tuf's own."""

    def _persist_root(self, version: int, data: bytes) -> None:
        path = Path(self._dir, "root_history", f"{version}.root.json")
        try:
            if path.read_bytes() == data:
                return
        except OSError:
            pass
        super()._persist_root(version, data)

    def _update_root_symlink(self) -> None:
        current = os.path.join("root_history", f"{self._trusted_set.root.version}.root.json")
        try:
            if os.readlink(os.path.join(self._dir, "root.json")) == current:
                return
        except OSError:
            pass
        super()._update_root_symlink()

    def fetch_target(self, targetinfo: TargetFile) -> bytes:
        """``download_target`` into memory: the target's bytes, once tuf has checked their
        length and digests (the URL formed as ``download_target`` forms it). The node loads
        the very bytes that were verified and writes them to disk itself."""
        if self._target_base_url is None:
            raise ValueError("target_base_url must be set in the constructor")
        path = targetinfo.path
        if self._trusted_set.root.consistent_snapshot and self.config.prefix_targets_with_hash:
            dirname, sep, basename = path.rpartition("/")
            path = f"{dirname}{sep}{next(iter(targetinfo.hashes.values()))}.{basename}"
        data = self._fetcher.download_bytes(f"{self._target_base_url}{path}", targetinfo.length)
        targetinfo.verify_length_and_hashes(data)
        return data


@contextmanager
def open_updater(home: EdgeHome, config: EdgeConfig) -> Iterator[NodeUpdater]:
    """An ``Updater`` bootstrapped from the provisioned root; it downloads (into memory)
    through one kept-alive connection (``fetcher.py``), closed when the block ends."""
    home.metadata.mkdir(parents=True, exist_ok=True)
    base = config.url.rstrip("/")
    fetcher = fetcher_for(base, USER_AGENT)
    try:
        with refusals(config.url):  # a damaged trust anchor or cache is refused, in one line
            updater = NodeUpdater(
                str(home.metadata), f"{base}/metadata/", None, f"{base}/targets/",
                fetcher=fetcher, config=UpdaterConfig(app_user_agent=USER_AGENT),
                bootstrap=home.trust_root.read_bytes(),
            )  # fmt: skip
        yield updater
    finally:
        close = getattr(fetcher, "close", None)  # tuf's own fetcher (behind a proxy) has none
        if close is not None:
            close()


def newest_release(updater: NodeUpdater, config: EdgeConfig) -> tuple[TargetFile, ReleaseTarget]:
    """Refresh the metadata and return this node's target and its checked custom fields."""
    with refusals(config.url):
        updater.refresh()
        target = updater.get_targetinfo(target_path(config.region, config.profile))
    if target is None:
        raise ReleaseServerUnavailable(
            f"no release for region {config.region}, profile {config.profile} on {config.url}"
        )
    try:
        release = ReleaseTarget.from_custom(target.custom)
    except MalformedRelease as exc:
        raise ReleaseRefused("invalid", str(exc)) from None
    if (release.region, release.profile) != (config.region, config.profile):
        raise ReleaseRefused(
            "wrong",
            f"the release at {target.path} is signed for region {release.region}, profile "
            f"{release.profile}; this node is {config.region}/{config.profile}",
        )
    return target, release


def download(updater: NodeUpdater, target: TargetFile, url: str) -> bytes:
    """The bytes of ``target``; TUF checks their length and digest as they arrive."""
    with refusals(url):
        return updater.fetch_target(target)

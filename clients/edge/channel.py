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


@contextmanager
def open_updater(home: EdgeHome, config: EdgeConfig) -> Iterator[Updater]:
    """An ``Updater`` bootstrapped from the provisioned root; downloads go to ``staging/``
    through one kept-alive connection (``fetcher.py``), closed when the block ends."""
    home.metadata.mkdir(parents=True, exist_ok=True)
    home.staging.mkdir(parents=True, exist_ok=True)
    base = config.url.rstrip("/")
    fetcher = fetcher_for(base, USER_AGENT)
    try:
        with refusals(config.url):  # a damaged trust anchor or cache is refused, in one line
            updater = Updater(
                str(home.metadata), f"{base}/metadata/", str(home.staging), f"{base}/targets/",
                fetcher=fetcher, config=UpdaterConfig(app_user_agent=USER_AGENT),
                bootstrap=home.trust_root.read_bytes(),
            )  # fmt: skip
        yield updater
    finally:
        close = getattr(fetcher, "close", None)  # tuf's own fetcher (behind a proxy) has none
        if close is not None:
            close()


def newest_release(updater: Updater, config: EdgeConfig) -> tuple[TargetFile, ReleaseTarget]:
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


def download(updater: Updater, target: TargetFile, dest: Path, url: str) -> Path:
    """Download ``target`` to ``dest``; TUF checks its length and digest as it arrives."""
    with refusals(url):
        return Path(updater.download_target(target, str(dest)))

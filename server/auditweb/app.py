"""The auditor's web view: a FastAPI app of server-rendered pages over a home's audit chains.

Read-only by construction: every database is opened read-only, and the app answers GET and
HEAD only (anything else: 405). A request path with a ``..`` segment, an encoded slash, dot
or backslash, or a NUL is refused (400) before routing; static files are a fixed set read
from the package. With a token, every request must carry it (``Authorization: Bearer T``,
the ``fedgate_token`` cookie, or ``?token=T`` once, which sets the cookie); without it: 401.
Every page has a JSON twin: the same path under ``/api`` or with ``?format=json``.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from fedgate.server.auditweb import pages, releases
from fedgate.server.auditweb.snapshot import Snapshots
from fedgate.server.auditweb.sources import Source
from fedgate.server.auditweb.templating import HERE, environment

TOKEN_COOKIE = "fedgate_token"
ALLOWED_METHODS = ("GET", "HEAD")
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_BAD_RAW = ("%2e", "%2f", "%5c", "%00", "\\", "\x00")

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]


def path_refused(raw: bytes) -> str:
    """Why a raw request path is refused, or "" when it is fine."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return "a request path must be ASCII (percent-encoded)"
    lowered = text.lower()
    if any(bad in lowered for bad in _BAD_RAW):
        return "encoded dots, slashes, backslashes and NULs are not allowed in a path"
    if any(seg in (".", "..") for seg in unquote(text).split("/")):
        return "'.' and '..' path segments are not allowed"
    if "//" in text:
        return "empty path segments are not allowed"
    return ""


class Guard:
    """ASGI middleware in front of everything: methods, path tricks, the token, headers."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ALLOWED_METHODS:
            await _plain(scope, receive, send, 405, "read-only: only GET and HEAD are answered",
                         {"Allow": ", ".join(ALLOWED_METHODS)})  # fmt: skip
            return
        why = path_refused(scope.get("raw_path") or scope["path"].encode())
        if why:
            await _plain(scope, receive, send, 400, f"path refused: {why}")
            return
        request = Request(scope)
        set_cookie = False
        if self.token is not None:
            given = _token_of(request)
            if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
                await _plain(scope, receive, send, 401, "an access token is required "
                             "(Authorization: Bearer TOKEN, or ?token=TOKEN once)")  # fmt: skip
                return
            set_cookie = request.query_params.get("token") is not None
        head = scope["method"] == "HEAD"
        if head:  # answered as GET, without the body
            scope = {**scope, "method": "GET"}
        if scope["path"] == "/api" or scope["path"].startswith("/api/"):
            scope = {**scope, "path": scope["path"][4:] or "/", "fedgate_json": True}

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]
                if set_cookie and self.token is not None:
                    cookie = (f"{TOKEN_COOKIE}={self.token}; HttpOnly; SameSite=Strict; "
                              "Path=/")  # fmt: skip
                    headers.append((b"set-cookie", cookie.encode()))
                message = {**message, "headers": headers}
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _token_of(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.cookies.get(TOKEN_COOKIE) or request.query_params.get("token")


async def _plain(scope: dict, receive: Callable, send: Callable, status: int, text: str,
                 headers: Mapping[str, str] | None = None) -> None:  # fmt: skip
    response = Response(f"{text}\n", status_code=status, media_type="text/plain",
                        headers={**HEADERS, **(headers or {})})  # fmt: skip
    await response(scope, receive, send)


STATIC = {name: (HERE / "static" / name).read_bytes() for name in ("audit.css",)}


def create_app(sources: list[Source], *, token: str | None = None, ttl: float = 60.0) -> Any:
    """The web view over ``sources`` (see ``sources.discover``), wrapped in ``Guard``."""
    snaps = Snapshots(sources, ttl=ttl)
    env = environment()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        snaps.close()

    app = FastAPI(title="fedgate audit", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)  # fmt: skip
    app.state.snapshots = snaps

    def render(request: Request, template: str, data: dict[str, Any]) -> Response:
        if request.scope.get("fedgate_json") or request.query_params.get("format") == "json":
            return JSONResponse(_json_twin(data))
        query = {k: v for k, v in request.query_params.items() if k != "token"}

        def link(**changes: Any) -> str:
            merged = {**query, **{k: str(v) for k, v in changes.items() if v not in (None, "")}}
            merged = {k: v for k, v in merged.items() if v != ""}
            for k, v in changes.items():
                if v in (None, ""):
                    merged.pop(k, None)
            return request.url.path + ("?" + urlencode(merged) if merged else "")

        html = env.get_template(template).render(**data, link=link, path=request.url.path,
                                                 query=query)  # fmt: skip
        return HTMLResponse(html)

    def query_of(request: Request) -> dict[str, str]:
        return dict(request.query_params)

    @app.exception_handler(pages.PageError)
    async def page_error(request: Request, exc: pages.PageError) -> Response:
        if request.scope.get("fedgate_json") or request.query_params.get("format") == "json":
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        html = env.get_template("error.html").render(title="error", message=str(exc),
                                                     link=lambda **_: "", path="")  # fmt: skip
        return HTMLResponse(html, status_code=exc.status)

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            raise pages.NotFound(f"no static file {name!r}")
        return Response(STATIC[name], media_type="text/css")

    @app.get("/")
    def overview(request: Request) -> Response:
        return render(request, "overview.html", pages.overview(snaps))

    @app.get("/runs")
    def runs(request: Request) -> Response:
        return render(request, "runs.html", pages.runs(snaps, query_of(request)))

    @app.get("/runs/{source}/{run}")
    def run(request: Request, source: str, run: str) -> Response:
        data = pages.run_page(snaps, source, run, query_of(request))
        data["shipped"] = releases.shipped(snaps, source, run)
        return render(request, "run.html", data)

    @app.get("/runs/{source}/{run}/rounds/{number}")
    def round_(request: Request, source: str, run: str, number: int) -> Response:
        data = pages.round_page(snaps, source, run, number, query_of(request))
        return render(request, "round.html", data)

    @app.get("/devices")
    def devices(request: Request) -> Response:
        return render(request, "devices.html", pages.devices(snaps, query_of(request)))

    @app.get("/devices/{source}/{device}")
    def device(request: Request, source: str, device: str) -> Response:
        data = pages.device_page(snaps, source, device, query_of(request))
        return render(request, "device.html", data)

    @app.get("/artifacts")
    def artifacts(request: Request) -> Response:
        return render(request, "artifacts.html", pages.artifacts(snaps, query_of(request)))

    @app.get("/artifacts/{source}/{sha}")
    def artifact(request: Request, source: str, sha: str) -> Response:
        return render(request, "artifact.html", pages.artifact_page(snaps, source, sha))

    @app.get("/gate")
    def gate(request: Request) -> Response:
        return render(request, "gate.html", pages.gate(snaps, query_of(request)))

    @app.get("/global")
    def global_versions(request: Request) -> Response:
        return render(request, "global.html", pages.global_versions(snaps, query_of(request)))

    @app.get("/global/{number}")
    def version(request: Request, number: int) -> Response:
        return render(request, "version.html", pages.version_page(snaps, number))

    @app.get("/releases")
    def release_list(request: Request) -> Response:
        return render(request, "releases.html", releases.releases(snaps, query_of(request)))

    @app.get("/releases/{seq}")
    def release(request: Request, seq: int) -> Response:
        return render(request, "release.html", releases.release_page(snaps, seq))

    return Guard(app, token)


def _json_twin(data: dict[str, Any]) -> Any:
    """The page's data without its drawings (the SVG is a rendering of the same data)."""
    out = pages.plain({k: v for k, v in data.items() if k not in ("charts", "legend")})
    if isinstance(out.get("lineage"), dict):
        out["lineage"].pop("svg", None)
    return out

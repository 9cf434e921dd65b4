"""The read-only web pages and JSON API over a store (``run_pipeline.py serve --db URL``).

:func:`create_app` builds the FastAPI app over an open store; :func:`serve` checks the token rule, opens the
store and runs uvicorn. Pages are rendered on the server (Jinja2); the timeline chart is inline SVG; the one
script on a page polls ``/api/version`` and reloads the page when a run has written something new.

Token rule: a server reachable beyond the loopback interface needs a token; with a token set, every request
must carry it as ``Authorization: Bearer <token>``, ``X-Reid-Token: <token>`` or ``?token=<token>`` (which also
sets a cookie, so the page's pictures and links work in a browser). Database credentials never reach a page,
a log line or an error: the store only knows its redacted URL, and any error is answered by one redacted line.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import cv2
import fastapi_offline
import numpy as np
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from common.redact import redact_text, redact_url, url_secrets
from pipeline.web import data
from pipeline.web.chart import timeline_svg
from pipeline.web.search import (
    CropEmbedder,
    ModelUnavailable,
    query_thumbnail,
    rank_identities,
    run_model,
    stored_embedding,
)
from storage.db import Store

__all__ = ["TOKEN_ENV", "TokenRuleError", "create_app", "check_token_rule", "is_loopback"]

log = logging.getLogger(__name__)

TOKEN_ENV = "REID_WEB_TOKEN"
_COOKIE = "reid_token"
_TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
_PICTURE_KINDS = ("crop", "attention")
# Swagger UI and ReDoc as files of a Python package (fastapi-offline's, MIT): /docs works without Internet.
DOCS_ASSETS = Path(fastapi_offline.__file__).with_name("static")
DOCS_ASSETS_URL = "/docs-assets"


def _session(request: Request) -> Iterator[Session]:
    """A read-only session of the app's store for one request."""
    with request.app.state.store.session(readonly=True) as s:
        yield s


DB = Annotated[Session, Depends(_session)]
Crop = Annotated[UploadFile, File(description="a crop of one person (JPEG or PNG)")]


class TokenRuleError(ValueError):
    """Listening beyond the loopback interface without a token."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token_rule(host: str, token: str | None) -> None:
    """Raise :class:`TokenRuleError` (one line) when ``host`` is not loopback and there is no token."""
    if not token and not is_loopback(host):
        raise TokenRuleError(
            f"refusing to listen on {host} without a token: pass --token or set {TOKEN_ENV} "
            "(or listen on 127.0.0.1)"
        )


def _time(value: str | None, name: str):
    try:
        return data.parse_time(value, name)
    except ValueError as e:
        raise HTTPException(422, str(e)) from None


def create_app(
    store: Store,
    *,
    token: str | None = None,
    db_url: str | None = None,
    embedder: CropEmbedder | None = None,
    refresh_s: float = 3.0,
) -> FastAPI:
    """The app over ``store`` (read-only sessions only). ``token``: required of every request when set.
    ``db_url``: the URL as given, only used to know which secrets to hide in errors. ``embedder``: embeds
    uploaded crops for "find this person" (default: the default checkpoint, loaded on first use).
    ``refresh_s``: how often pages poll for new data (0: never)."""
    secrets = [*url_secrets(db_url or ""), *([token] if token else [])]
    embedder = embedder or CropEmbedder()
    app = FastAPI(
        title="reid-pipeline",
        description="Read-only view of a re-identification store: identities, timelines, cameras, search.",
        version="1",
        docs_url=None,  # FastAPI's own pages load their scripts from a CDN: served below from DOCS_ASSETS
        redoc_url=None,
    )
    app.state.store = store
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            # no badge that sends the document to the public validator
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token:
            given = (
                request.headers.get("x-reid-token")
                or request.query_params.get("token")
                or request.cookies.get(_COOKIE)
            )
            auth = request.headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not given or not hmac.compare_digest(given.encode(), token.encode()):
                return JSONResponse(
                    {"detail": "a valid token is required"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        try:
            response = await call_next(request)
        except Exception as e:  # every error: one redacted line, in the log and in the answer
            line = redact_text(f"{type(e).__name__}: {e}".splitlines()[0], secrets)
            log.error("%s %s failed: %s", request.method, request.url.path, line)
            return JSONResponse({"detail": f"internal error: {line}"}, status_code=500)
        if token and request.query_params.get("token"):
            response.set_cookie(_COOKIE, token, httponly=True, samesite="strict")
        return response

    def page(request: Request, name: str, **context) -> HTMLResponse:
        return _TEMPLATES.TemplateResponse(
            request, name, {"db": redact_url(store.url), "refresh_s": refresh_s, **context}
        )

    # ---------------------------------------------------------------------------------------------
    # JSON API

    @app.get("/api/identities", tags=["api"], summary="Identities, filtered by camera and time window")
    def api_identities(
        s: DB,
        camera: str | None = None,
        since: str | None = Query(None, description="ISO 8601 (UTC if naive) or POSIX seconds"),
        until: str | None = Query(None, description="ISO 8601 (UTC if naive) or POSIX seconds"),
        limit: int = Query(1000, ge=1, le=100_000, description="at most this many, newest last seen first"),
    ) -> list[dict]:
        try:
            return data.identities(
                s, camera=camera, since=_time(since, "since"), until=_time(until, "until"), limit=limit
            )
        except ValueError as e:
            raise HTTPException(422, str(e)) from None

    @app.get(
        "/api/identities/{identity_id}",
        tags=["api"],
        summary="One identity: sightings with similarity and picture URLs",
    )
    def api_identity(identity_id: int, s: DB) -> dict:
        out = data.identity_detail(s, identity_id)
        if out is None:
            raise HTTPException(404, f"no identity {identity_id} with sightings")
        return out

    @app.get(
        "/pictures/{tracklet_id}/{kind}/{rank}",
        tags=["api"],
        summary="A stored picture (image/jpeg)",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    def api_picture(tracklet_id: int, kind: str, rank: int, s: DB) -> Response:
        if kind not in _PICTURE_KINDS:
            raise HTTPException(404, f"kind must be one of {_PICTURE_KINDS}")
        jpeg = data.picture(s, tracklet_id, kind, rank)
        if jpeg is None:
            raise HTTPException(404, f"no {kind} picture of rank {rank} for tracklet {tracklet_id}")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/cameras", tags=["api"], summary="Cameras with their health")
    def api_cameras(s: DB) -> list[dict]:
        return data.cameras(s)

    @app.get("/api/cameras/{camera_id}", tags=["api"], summary="One camera: health and outage history")
    def api_camera(camera_id: str, s: DB) -> dict:
        out = data.camera_detail(s, camera_id)
        if out is None:
            raise HTTPException(404, f"no camera {camera_id!r}")
        return out

    @app.get(
        "/api/cameras/{camera_id}/seen", tags=["api"], summary="Who was seen at a camera between two times"
    )
    def api_seen(s: DB, camera_id: str, since: str | None = None, until: str | None = None) -> list[dict]:
        if data.camera_detail(s, camera_id, events=0) is None:
            raise HTTPException(404, f"no camera {camera_id!r}")
        try:
            return data.seen_at_camera(s, camera_id, _time(since, "since"), _time(until, "until"))
        except ValueError as e:
            raise HTTPException(422, str(e)) from None

    @app.get(
        "/api/version", tags=["api"], summary="Row counts and newest decision (changes while a run writes)"
    )
    def api_version(s: DB) -> dict:
        return data.data_version(s)

    def _search_tracklet(s: Session, tracklet_id: int) -> dict:
        found = stored_embedding(s, tracklet_id)
        if found is None:
            raise HTTPException(404, f"tracklet {tracklet_id} has no embedding from the run's model")
        model, vector = found
        return {
            "model": model,
            "query": {"tracklet_id": tracklet_id},
            "results": rank_identities(s, model, vector),
        }

    def _search_crop(s: Session, jpeg: bytes) -> dict:
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) if jpeg else None
        if image is None:
            raise HTTPException(422, "the upload is not an image (JPEG or PNG)")
        model = run_model(s)
        if model is None:
            return {"model": None, "query": {"upload": True}, "results": []}
        try:
            vector = embedder.embed(image, model)
        except ModelUnavailable as e:
            raise HTTPException(409, str(e)) from None
        return {"model": model, "query": {"upload": True}, "results": rank_identities(s, model, vector)}

    @app.get("/api/search", tags=["api"], summary="Closest identities to a stored sighting's embedding")
    def api_search_tracklet(tracklet_id: int, s: DB) -> dict:
        return _search_tracklet(s, tracklet_id)

    @app.post(
        "/api/search",
        tags=["api"],
        summary="Closest identities to an uploaded crop, embedded with the run's model",
    )
    async def api_search_crop(crop: Crop, s: DB) -> dict:
        return await run_in_threadpool(
            _search_crop, s, await crop.read()
        )  # the model runs off the event loop

    @app.get("/metrics", tags=["api"], summary="Prometheus metrics", response_class=PlainTextResponse)
    def metrics(s: DB) -> PlainTextResponse:
        return PlainTextResponse(data.metrics_text(s), media_type="text/plain; version=0.0.4; charset=utf-8")

    # ---------------------------------------------------------------------------------------------
    # Pages

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    @app.get("/identities", response_class=HTMLResponse, include_in_schema=False)
    def identities_page(
        s: DB,
        request: Request,
        camera: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = Query(500, ge=1, le=100_000),
    ) -> HTMLResponse:
        try:
            rows = data.identities(
                s,
                camera=camera or None,
                since=_time(since, "since"),
                until=_time(until, "until"),
                limit=limit,
            )
            error = None
        except (ValueError, HTTPException) as e:
            rows, error = [], getattr(e, "detail", str(e))
        return page(
            request,
            "identities.html",
            rows=rows,
            cameras=data.cameras(s),
            camera=camera or "",
            since=since or "",
            until=until or "",
            error=error,
        )

    @app.get("/identities/{identity_id}", response_class=HTMLResponse, include_in_schema=False)
    def identity_page(request: Request, identity_id: int, s: DB) -> HTMLResponse:
        out = data.identity_detail(s, identity_id)
        if out is None:
            raise HTTPException(404, f"no identity {identity_id} with sightings")
        return page(request, "identity.html", ident=out, chart=timeline_svg(out["sightings"]))

    @app.get("/cameras", response_class=HTMLResponse, include_in_schema=False)
    def cameras_page(request: Request, s: DB) -> HTMLResponse:
        return page(request, "cameras.html", rows=data.cameras(s))

    @app.get("/cameras/{camera_id}", response_class=HTMLResponse, include_in_schema=False)
    def camera_page(
        s: DB,
        request: Request,
        camera_id: str,
        since: str | None = None,
        until: str | None = None,
    ) -> HTMLResponse:
        cam = data.camera_detail(s, camera_id)
        if cam is None:
            raise HTTPException(404, f"no camera {camera_id!r}")
        try:
            seen, error = (
                data.seen_at_camera(s, camera_id, _time(since, "since"), _time(until, "until")),
                None,
            )
        except (ValueError, HTTPException) as e:
            seen, error = [], getattr(e, "detail", str(e))
        return page(
            request, "camera.html", cam=cam, seen=seen, since=since or "", until=until or "", error=error
        )

    @app.get("/search", response_class=HTMLResponse, include_in_schema=False)
    def search_page(request: Request, s: DB, tracklet_id: int | None = None) -> HTMLResponse:
        result, error = None, None
        if tracklet_id is not None:
            try:
                result = _search_tracklet(s, tracklet_id)
            except HTTPException as e:
                error = e.detail
        return page(request, "search.html", result=result, error=error, model=run_model(s), live=False)

    @app.post("/search", response_class=HTMLResponse, include_in_schema=False)
    async def search_upload(request: Request, crop: Crop, s: DB) -> HTMLResponse:
        result, error, shown = None, None, None
        raw = await crop.read()
        try:
            result = await run_in_threadpool(_search_crop, s, raw)  # the model runs off the event loop
            shown = await run_in_threadpool(query_thumbnail, raw)
        except HTTPException as e:
            error = e.detail
        return page(
            request, "search.html", result=result, error=error, model=run_model(s), live=False, shown=shown
        )

    return app

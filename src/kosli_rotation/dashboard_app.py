"""The web app the plugin mounts in Airflow's API server: the Key rotation page, for logged-in Airflow users only.

Authentication is Airflow's own: the UI's session cookie or a Bearer token, checked by the auth manager, so the page
is exactly as private as the rest of the UI. It shows the viewer only the keys whose rotation DAG the auth manager
lets them read, and calls the Airflow API with the viewer's token at the configured API address (``[api] base_url``,
else the server's own host and port), never at the one a request's ``Host`` header names.
"""

from __future__ import annotations

from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from kosli_rotation.dashboard import api_run_reader, collect_rows, render_page
from kosli_rotation.dashboard_access import api_base_url, viewer_filter

#: The navigation icon (a key), served by the app itself: the UI may have no internet access.
ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" '
    'stroke-linecap="round" stroke-linejoin="round"><circle cx="7.5" cy="15.5" r="5.5"/><path d="m21 2-9.6 9.6"/>'
    '<path d="m15.5 7.5 3 3L22 7l-3-3"/></svg>'
)


def _viewer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    return header[7:] if header.lower().startswith("bearer ") else request.cookies.get(COOKIE_NAME_JWT_TOKEN, "")


def create_app() -> FastAPI:
    app = FastAPI(title="Kosli key rotation", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def key_rotation_page(request: Request, user: GetUserDep) -> HTMLResponse:
        api = api_run_reader(api_base_url(), _viewer_token(request))
        rows = collect_rows(api, may_read=viewer_filter(user))
        return HTMLResponse(render_page(rows), headers={"Cache-Control": "no-store"})

    @app.get("/icon.svg", include_in_schema=False)
    def icon() -> Response:
        return Response(ICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    return app

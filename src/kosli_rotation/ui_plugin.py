"""Airflow plugin: the "Key rotation" page in the Airflow UI (kosli_rotation/dashboard_app.py, dashboard.py).

Declared by the distribution's ``airflow.plugins`` entry point (pyproject.toml), so it loads wherever the package is
installed, whatever the deployment's plugins folder holds. Every Airflow component loads plugins, but only the API
server serves the page: the library is imported on the page's first request, so the scheduler, dag-processor and
workers never import the dashboard through this plugin.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/kosli-rotation"


class KeyRotationPage:
    """An ASGI app that builds the real one (kosli_rotation.dashboard_app) on its first request."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            from kosli_rotation.dashboard_app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


class KosliKeyRotationPlugin(AirflowPlugin):
    name = "kosli_key_rotation"
    fastapi_apps = [{"app": KeyRotationPage(), "url_prefix": URL_PREFIX, "name": "Key rotation"}]
    external_views = [
        {
            "name": "Key rotation",
            "href": f"{URL_PREFIX}/",
            "url_route": "key-rotation",
            "destination": "nav",
            "icon": f"{URL_PREFIX}/icon.svg",
        }
    ]

"""Interactive docs that work offline: Swagger UI's assets come from a Python package
(`swagger-ui-bundle-v2`), and the OpenAPI document declares the bearer API key, so
"Authorize" and "Try it out" reach the `/v1` routes."""

from __future__ import annotations

from typing import Any, get_args

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from promptq.api.deps import CurrentKey

__all__ = ["ASSETS_PATH", "SECURITY_SCHEME", "install_docs"]

#: Where Swagger UI's JavaScript and CSS are served from.
ASSETS_PATH = "/docs-assets"
#: The OpenAPI security scheme name of promptq's API keys.
SECURITY_SCHEME = "APIKey"


def _needs_key(dependant: Dependant) -> bool:
    key_dependency = get_args(CurrentKey)[1].dependency
    pending = list(dependant.dependencies)
    while pending:
        dep = pending.pop()
        if dep.call is key_dependency:
            return True
        pending.extend(dep.dependencies)
    return False


def _openapi_with_security(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    schema.setdefault("components", {})["securitySchemes"] = {
        SECURITY_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "A promptq API key (`promptq keys create NAME`).",
        }
    }
    for route in app.routes:
        if not (isinstance(route, APIRoute) and _needs_key(route.dependant)):
            continue
        for method in route.methods:
            operation = schema["paths"].get(route.path_format, {}).get(method.lower())
            if operation is not None:
                operation["security"] = [{SECURITY_SCHEME: []}]
    app.openapi_schema = schema
    return schema


def install_docs(app: FastAPI) -> None:
    """Serve /docs from local assets and add the API key scheme to /openapi.json; the app
    must be made with `docs_url=None, redoc_url=None`."""
    app.mount(ASSETS_PATH, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
    app.openapi = lambda: _openapi_with_security(app)  # type: ignore[method-assign]
    redirect_url = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
            oauth2_redirect_url=redirect_url,
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

"""Builds the aiohttp application: auth, OTLP routes and the JSON API."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from . import otlp_http, routes
from .auth import FailureLimit, middleware

if TYPE_CHECKING:
    from ..agent import Agent


def make_app(agent: Agent) -> web.Application:
    config = agent.config
    open_routes = list(config.open_routes)
    app = web.Application(
        middlewares=[
            middleware(
                agent.keys,
                open_routes,
                routes.error_for,
                agent.refused_auth,
                FailureLimit(config.auth_failures_per_minute),
            )
        ],
        client_max_size=config.body_limit_bytes,
    )
    for signal in ("traces", "logs", "metrics"):
        app.router.add_post(f"/v1/{signal}", otlp_http.handler(agent, signal))
    routes.setup(app, agent)
    return app

"""A minimal liteinfer plugin: one command, one route, one catalog name, one config section.

Installed (`pip install ./examples/hello-plugin`), liteinfer finds `plugin` through the
entry point in pyproject.toml. Keep this module light: every `liteinfer` command imports it.
No `from __future__ import annotations` here: FastAPI reads the route's annotations, and
`Request` is imported inside the router factory (FastAPI only loads with the server).
"""

import argparse
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from liteinfer.core.plugins import CatalogSource, Plugin, settings


class HelloSettings(BaseModel):
    """device_config.json: "plugins": {"hello": {"greeting": "Hi"}}"""

    model_config = ConfigDict(extra="forbid")
    greeting: str = "Hello"


def _hello(args: argparse.Namespace) -> int:
    from liteinfer.core.config import load_config

    print(f"{settings(load_config(args.config), 'hello').greeting}, {args.name}!")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hello", help="say hello (the example plugin)")
    p.add_argument("--name", default="world")
    p.add_argument("--config", default=None, help="device_config.json")
    p.set_defaults(func=_hello)


def make_router():
    from fastapi import APIRouter, Request  # FastAPI loads with the server, not with every command

    router = APIRouter()

    @router.get("/hello")
    async def hello(request: Request):
        services = request.app.state.services  # {"llm": ..., "embedding": ...}: the server's models
        llm = services.get("llm")
        return {"greeting": settings(request.app.state.config, "hello").greeting,
                "model": llm.name if llm else None, "ready": bool(llm and llm.ready)}

    return router


def _resolve(name: str) -> Path | None:
    if name != "hello-tiny":
        return None
    from liteinfer.core.catalog import pull

    return pull("smollm2-135m")  # a catalog source may point anywhere: a path, a download, a mount


plugin = Plugin(
    name="hello",
    description="the example plugin",
    commands=[register],
    routes=[make_router],
    catalog=[CatalogSource("hello", _resolve, names=lambda: ["hello-tiny"])],
    config={"hello": HelloSettings},
)

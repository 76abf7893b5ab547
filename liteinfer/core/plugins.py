"""Plugins: installed packages that add to liteinfer through the entry-point group `liteinfer.plugins`.

A plugin package names a `Plugin` (or a function that returns one) in its pyproject.toml:

    [project.entry-points."liteinfer.plugins"]
    hello = "liteinfer_hello:plugin"

and the object says what it adds, each part optional (docs/plugins.md):

    plugin = Plugin(
        name="hello",
        commands=[register],                  # register(sub): argparse subcommands, like core modules
        routes=[make_router],                 # make_router() -> fastapi.APIRouter, called by the server
        engines=[EngineType(".lienc", ...)],  # model files this plugin loads, by suffix
        catalog=[CatalogSource("mine", resolve)],  # resolve(name) -> Path | None for names the catalog lacks
        config={"hello": HelloSettings},      # pydantic model for device_config.json's plugins.hello
        serve=[ServeMode("--ray", add_arguments, run)],  # another way to run `serve`, by a flag of its own
    )

Discovery happens once per process, on first use (`registry()`). A plugin whose import or
whose factory fails is reported in one warning line and left out; so is a command hook or a
router factory that raises. The rest of liteinfer runs as without it. LITEINFER_NO_PLUGINS=1
turns discovery off.

This module is in core/ (the lowest layer) so every layer may ask it; it imports nothing of
liteinfer's above core. Plugins themselves live outside the package and may use any layer.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from liteinfer.core.errors import LiteInferError

GROUP = "liteinfer.plugins"
log = logging.getLogger("liteinfer.plugins")

# register(sub): adds subparsers to `liteinfer` and sets func(args) -> int on each, as core modules do
CommandHook = Callable[[argparse._SubParsersAction], None]
# make_router() -> fastapi.APIRouter; a factory so `liteinfer --help` never imports FastAPI
RouterFactory = Callable[[], Any]


@dataclass(frozen=True)
class EngineType:
    """Model files a plugin loads, recognised by their suffix (".lienc"). Each loader returns an
    object with the interface of the core engine for that kind, or raises LiteInferError.

    load_llm(path, EngineSettings, DeviceConfig) -> a LlamaEngine (or the same interface)
    load_oneshot(path, OneShotSettings, DeviceConfig) -> an Embedder / ImageClassifier
    check(path, kind, DeviceConfig) -> None: cheap, before the server binds its port (e.g. the
        key is there and opens the file); kind is "llm" or "oneshot"
    """

    suffix: str
    description: str
    load_llm: Callable[[Path, Any, Any], Any] | None = None
    load_oneshot: Callable[[Path, Any, Any], Any] | None = None
    check: Callable[[Path, str, Any], None] | None = None


def _no_names() -> list[str]:
    return []


@dataclass(frozen=True)
class CatalogSource:
    """Model names the built-in catalog does not know. `resolve(name)` returns a local path (a
    .gguf, a .onnx, or a file an EngineType loads), or None when the name is not this source's;
    `names()` lists what it offers (for `liteinfer plugins`)."""

    name: str
    resolve: Callable[[str], Path | None]
    names: Callable[[], list[str]] = _no_names


@dataclass(frozen=True)
class ServeMode:
    """Another way to run `liteinfer serve`, chosen by a flag of its own (plugins/ray_serve: --ray).

    add_arguments(group): adds the mode's options, `flag` among them, to serve's parser (an
        argument group titled by the plugin); an option a core one has is refused by argparse
        and the mode left out whole
    run(args) -> int: serves instead of the one-box server when `flag` was given; `args` holds
        all of serve's options too (liteinfer.server.app.config_from_args turns them into a
        DeviceConfig). Without `flag`, an option of the mode is a one-line error.
    """

    flag: str
    add_arguments: Callable[[argparse._ArgumentGroup], None]
    run: Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Plugin:
    name: str
    description: str = ""
    commands: Sequence[CommandHook] = ()
    routes: Sequence[RouterFactory] = ()
    engines: Sequence[EngineType] = ()
    catalog: Sequence[CatalogSource] = ()
    config: Mapping[str, type[BaseModel]] = field(default_factory=dict)
    serve: Sequence[ServeMode] = ()


@dataclass
class Loaded:
    """A plugin that loaded, where it came from, and what it added (filled as the parts are used)."""

    plugin: Plugin
    entry_point: str  # "liteinfer_hello:plugin"
    dist: str  # the installed distribution ("liteinfer-hello"), "" when registered in-process
    version: str
    commands: list[str] = field(default_factory=list)
    serve_options: list[str] = field(default_factory=list)  # options its serve modes added to `serve`
    errors: list[str] = field(default_factory=list)  # a part that failed (a command hook, a router)


@dataclass(frozen=True)
class Failed:
    name: str  # the entry point's name
    dist: str
    version: str
    error: str  # one line


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class Registry:
    """The plugins of this process and lookups over them."""

    def __init__(self) -> None:
        self.loaded: list[Loaded] = []
        self.failed: list[Failed] = []
        self._serve_actions: dict[int, list[argparse.Action]] = {}  # id(ServeMode) -> the options it added

    # ---- discovery

    def discover(self) -> None:
        try:
            entry_points = metadata.entry_points(group=GROUP)
        except Exception as e:  # a broken dist-info elsewhere in the environment
            self._fail(Failed("(discovery)", "", "", _one_line(e)))
            return
        seen: set[str] = set()
        for ep in sorted(entry_points, key=lambda ep: ep.name):
            dist = ep.dist.name if ep.dist is not None else ""
            version = ep.dist.version if ep.dist is not None else ""
            if ep.name in seen:  # the same distribution on sys.path twice: the first one wins
                continue
            seen.add(ep.name)
            try:
                obj = ep.load()
                plugin = obj if isinstance(obj, Plugin) else obj()
                if not isinstance(plugin, Plugin):
                    raise TypeError(f"{ep.value} gave a {type(plugin).__name__}, not a liteinfer Plugin")
            except (Exception, SystemExit) as e:  # whatever a plugin raises on import, the core runs without it
                self._fail(Failed(ep.name, dist, version, _one_line(e)))
                continue
            self.add(plugin, entry_point=ep.value, dist=dist, version=version)

    def add(self, plugin: Plugin, entry_point: str = "", dist: str = "", version: str = "") -> Loaded | None:
        """Register a plugin (discovery does; tests and embedding apps may). A name, file suffix or
        config section another plugin has already taken is reported and the plugin left out."""
        clash = self._clash(plugin)
        if clash:
            self._fail(Failed(plugin.name, dist, version, clash))
            return None
        entry = Loaded(plugin, entry_point, dist, version)
        self.loaded.append(entry)
        return entry

    def _clash(self, plugin: Plugin) -> str | None:
        for other in self.loaded:
            p = other.plugin
            if p.name == plugin.name:
                where = other.dist or other.entry_point
                return f"another plugin is named {plugin.name!r}" + (f" ({where})" if where else "")
            for suffix in {e.suffix for e in plugin.engines} & {e.suffix for e in p.engines}:
                return f"plugin {p.name!r} already loads {suffix} files"
            for section in set(plugin.config) & set(p.config):
                return f"plugin {p.name!r} already owns config section {section!r}"
        return None

    def _fail(self, failed: Failed) -> None:
        self.failed.append(failed)
        where = f" ({failed.dist} {failed.version})" if failed.dist else ""
        log.warning("plugin %s%s not loaded: %s; liteinfer runs without it", failed.name, where, failed.error)

    def _part_failed(self, entry: Loaded, part: str, e: BaseException) -> None:
        msg = f"{part}: {_one_line(e)}"
        entry.errors.append(msg)
        log.warning("plugin %s: %s; left out", entry.plugin.name, msg)

    # ---- the parts, as the CLI, the server, the catalog and the services use them

    def add_commands(self, sub: argparse._SubParsersAction) -> None:
        """Run every plugin's command hooks on `liteinfer`'s subparsers; a hook that raises (a
        name a core command has, a bug) is reported and its commands left out."""
        for entry in self.loaded:
            for hook in entry.plugin.commands:
                before = dict(sub.choices)
                try:
                    hook(sub)
                except Exception as e:  # argparse's "conflicting subparser", or the plugin's own bug
                    for name in set(sub.choices) - set(before):  # a half-registered hook leaves nothing
                        del sub.choices[name]
                    sub._choices_actions[:] = [a for a in sub._choices_actions if a.dest in sub.choices]
                    self._part_failed(entry, "commands", e)
                    continue
                entry.commands += [n for n in sub.choices if n not in before]

    def add_serve_options(self, parser: argparse.ArgumentParser) -> None:
        """Every plugin's serve modes add their options to `serve`'s parser, each in a group of
        its own; one that clashes with an option already there (or raises) is left out whole."""
        for entry in self.loaded:
            for mode in entry.plugin.serve:
                actions, strings = list(parser._actions), dict(parser._option_string_actions)
                exclusive = list(parser._mutually_exclusive_groups)
                group = parser.add_argument_group(f"{entry.plugin.name} plugin")
                try:
                    mode.add_arguments(group)
                    if mode.flag not in parser._option_string_actions:
                        raise ValueError(f"serve mode {mode.flag} did not add its flag")
                except Exception as e:  # argparse's "conflicting option string", or the plugin's own bug
                    parser._actions[:] = actions
                    parser._option_string_actions.clear()
                    parser._option_string_actions.update(strings)
                    parser._action_groups.remove(group)
                    parser._mutually_exclusive_groups[:] = exclusive
                    self._part_failed(entry, "serve options", e)
                    continue
                added = parser._actions[len(actions):]
                self._serve_actions[id(mode)] = added
                entry.serve_options += [a.option_strings[0] for a in added]

    def serve_mode(self, args: argparse.Namespace) -> ServeMode | None:
        """The serve mode whose flag `args` has; an option of a mode given without its flag is a
        LiteInferError naming both."""
        chosen = None
        for entry in self.loaded:
            for mode in entry.plugin.serve:
                added = self._serve_actions.get(id(mode), [])
                flag = next((a for a in added if mode.flag in a.option_strings), None)
                if flag is None:  # left out (a clash): its options are not on the parser
                    continue
                if getattr(args, flag.dest, None):
                    if chosen is not None:
                        raise LiteInferError(f"{chosen.flag} and {mode.flag}: give one of them")
                    chosen = mode
                    continue
                for action in added:
                    if getattr(args, action.dest, action.default) != action.default:
                        raise LiteInferError(f"{action.option_strings[0]} is an option of {mode.flag}: give "
                                             f"{mode.flag} too")
        return chosen

    def routers(self) -> list[tuple[Loaded, Any]]:
        """(plugin, APIRouter) for every route factory that works."""
        out = []
        for entry in self.loaded:
            for factory in entry.plugin.routes:
                try:
                    out.append((entry, factory()))
                except Exception as e:  # the server starts without this plugin's routes
                    self._part_failed(entry, "routes", e)
        return out

    def engine_for(self, path: str | os.PathLike) -> EngineType | None:
        name = Path(path).name
        for entry in self.loaded:
            for engine in entry.plugin.engines:
                if name.endswith(engine.suffix):
                    return engine
        return None

    def resolve_model(self, name: str) -> Path | None:
        """The first catalog source that knows `name`; a source that raises LiteInferError says why."""
        for entry in self.loaded:
            for source in entry.plugin.catalog:
                path = source.resolve(name)
                if path is not None:
                    return Path(path)
        return None

    def config_section(self, section: str) -> type[BaseModel] | None:
        for entry in self.loaded:
            if section in entry.plugin.config:
                return entry.plugin.config[section]
        return None


_registry: Registry | None = None


def registry() -> Registry:
    """This process's plugins, discovered on first use."""
    global _registry
    if _registry is None:
        _registry = Registry()
        if os.environ.get("LITEINFER_NO_PLUGINS", "") not in ("1", "true", "yes"):
            _registry.discover()
    return _registry


def engine_for(path: str | os.PathLike) -> EngineType | None:
    """The plugin engine type for a model file, or None for core files (.gguf, .onnx)."""
    return registry().engine_for(path)


def validate_sections(sections: Mapping[str, Any], where: str = "config") -> dict[str, BaseModel]:
    """Validate device_config.json's `plugins` object: each section a plugin registered is checked
    against its model (one-line error naming plugins.SECTION.FIELD); sections no loaded plugin
    owns are kept as they are (the plugin may be uninstalled for now)."""
    out: dict[str, BaseModel] = {}
    for section, raw in sections.items():
        model = registry().config_section(section)
        if model is None:
            continue
        try:
            out[section] = model.model_validate(raw)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in ("plugins", section, *err["loc"]))
            raise LiteInferError(f"{where}: field {loc}: {err['msg']}") from None
    return out


def settings(config: Any, section: str) -> BaseModel:
    """A plugin's validated settings from a DeviceConfig (its defaults when the file has none)."""
    model = registry().config_section(section)
    if model is None:
        raise LiteInferError(f"no loaded plugin owns config section {section!r}")
    raw = (getattr(config, "plugins", None) or {}).get(section, {})
    return validate_sections({section: raw})[section]


def check_model(path: str | os.PathLike, kind: str, config: Any) -> None:
    """A plugin file type's cheap check (its key is there, its header opens), before a server
    binds its port; nothing for core files."""
    engine = engine_for(path)
    if engine is not None and engine.check is not None:
        engine.check(Path(path), kind, config)

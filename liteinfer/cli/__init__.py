"""The `liteinfer` command. Each subcommand lives in the module that implements it.

A module listed in COMMAND_MODULES defines `register(sub)` that adds its subparsers and sets
`func(args) -> int`. Modules keep heavy imports (numpy, llama_cpp, onnxruntime, fastapi)
inside functions so `liteinfer --help` stays fast. Installed plugins add their commands after
the core's (core/plugins.py, docs/plugins.md); one that fails is reported and left out.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from liteinfer import __version__
from liteinfer.core.errors import LiteInferError
from liteinfer.core.extras import missing_message
from liteinfer.core.files import disk_error
from liteinfer.core.plugins import registry

COMMAND_MODULES = [
    "liteinfer.cli.models",  # pull, models, show, rm, ps
    "liteinfer.cli.generate",  # generate, chat
    "liteinfer.server.app",  # serve
    "liteinfer.profile.cli",  # profile, doctor
    "liteinfer.quant.cli",  # quantize
    "liteinfer.convert.cli",  # convert
    "liteinfer.evaluate.cli",  # eval
    "liteinfer.cli.oneshot",  # embed, classify
    "liteinfer.cli.voice",  # transcribe, say, voice
    "liteinfer.tune.cli",  # tune
    "liteinfer.bench",  # bench
    "liteinfer.power.cli",  # power
    "liteinfer.cli.plugins",  # plugins
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="liteinfer", description="Local AI inference for small machines.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):  # not written yet: skip
                continue
            raise
        module.register(sub)
    registry().add_commands(sub)  # plugins' commands; a core name stays the core's
    return parser


def _version() -> str:
    return f"liteinfer {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LiteInferError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except ModuleNotFoundError as e:  # an optional extra (quant, convert, tune, ...) not installed
        msg = missing_message(e.name, args.command)
        if msg is None:
            return _internal_error(e)
        print(f"error: {msg}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk or a read-only folder names the path, not "internal"
        err = disk_error(e, e.filename or "the output")
        if err is None:
            return _internal_error(e)
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Exception as e:
        return _internal_error(e)


def _internal_error(e: Exception) -> int:
    """Never a traceback for users; LITEINFER_DEBUG=1 shows it."""
    if os.environ.get("LITEINFER_DEBUG"):
        raise e
    print(f"error: internal: {type(e).__name__}: {e} (LITEINFER_DEBUG=1 for details)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())

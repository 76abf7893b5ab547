"""liteinfer-ray: `liteinfer serve --ray`, the one-box server as replicas of a Ray Serve deployment.

    liteinfer serve --ray --replicas 2                       # a local Ray on this machine
    liteinfer serve --ray --autoscale 1:4 --address ray://head:10001 --config /etc/liteinfer/device_config.json

Each replica runs the liteinfer app (its own engine, its node's config file and serve's flags
on top) behind one ingress that keeps a conversation on the replica holding its KV cache
(affinity.py), retries a request whose replica died before it sent anything (deployments.py)
and answers /metrics for all replicas (metrics.py). docs/cluster.md says how to go from one
box to a cluster. Built on liteinfer's plugin API only: a `ServeMode` adds the options to
`serve`. This module stays light (every `liteinfer` command imports it): Ray loads with
`serve --ray`.
"""

from __future__ import annotations

import argparse

from liteinfer.core.plugins import Plugin, ServeMode

__version__ = "0.1.0"


def autoscale(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition(":")
    try:
        bounds = int(lo), int(hi)
    except ValueError:
        bounds = None
    if not sep or bounds is None or not 0 <= bounds[0] <= bounds[1] or bounds[1] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give MIN:MAX replicas, 0 <= MIN <= MAX, MAX >= 1 (e.g. 1:4)")
    return bounds


def positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= 1")
    return n


def resource(text: str) -> tuple[str, float]:
    name, _, amount = text.partition("=")
    try:
        value = float(amount) if amount else 1.0
    except ValueError:
        value = -1.0
    if not name or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME or NAME=AMOUNT (a custom resource of `ray start "
                                         "--resources`)")
    return name, value


def add_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--ray", action="store_true",
                   help="serve as a Ray Serve deployment: replicas of this server behind one ingress (docs/cluster.md)")
    how_many = g.add_mutually_exclusive_group()
    how_many.add_argument("--replicas", type=positive, default=None, metavar="N", help="replicas (default 1)")
    how_many.add_argument("--autoscale", type=autoscale, default=None, metavar="MIN:MAX",
                          help="let Ray add and remove replicas on their queue length, between MIN and MAX")
    g.add_argument("--address", default=None, metavar="ADDR",
                   help="a running Ray cluster: ray://HEAD:10001 (Ray Client), HEAD:6379 or auto; default: start "
                   "a Ray of its own on this machine")
    g.add_argument("--replica-cpus", type=positive, default=None, metavar="N",
                   help="CPUs Ray reserves for each replica (default: a local Ray's cores shared out between the "
                   "replicas, and those are its engine threads; on a cluster 1, threads from each node's config)")
    g.add_argument("--ray-resource", type=resource, action="append", default=[], metavar="NAME[=N]",
                   help="a custom resource every replica needs (`ray start --resources`): one model per device class")
    g.add_argument("--app-name", default=None, metavar="NAME", help="the Ray Serve application (default liteinfer)")
    g.add_argument("--route-prefix", default=None, metavar="PATH",
                   help="where the application answers on Ray's HTTP port (default /)")
    g.add_argument("--target-ongoing", type=positive, default=None, metavar="N",
                   help="--autoscale: requests per replica Ray aims for (default: the scheduler's max_batch)")


def run(args: argparse.Namespace) -> int:
    from liteinfer_ray.cli import serve_ray  # on use: Ray loads with `serve --ray` only (start-up time)

    return serve_ray(args)


plugin = Plugin(
    name="ray",
    description="serve on Ray Serve: replicas across machines, conversation affinity, autoscaling",
    serve=[ServeMode("--ray", add_arguments, run)],
)

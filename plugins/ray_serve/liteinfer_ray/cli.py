"""`liteinfer serve --ray`: connect to Ray (or start one on this machine), deploy the ingress
and the replicas as one Ray Serve application, wait for SIGINT/SIGTERM, then take the
application down (and the Ray this command started)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from liteinfer.core.errors import LiteInferError

# serve's options that are not the replica's business (keys travel on their own, the mode's
# own options stay with the driver)
DRIVER_ONLY = {"func", "command", "api_key", "api_key_file", "ray", "replicas", "autoscale", "address",
               "replica_cpus", "ray_resource", "app_name", "route_prefix", "target_ongoing"}


# Ray settings for a local Ray (and for `ray start` on a cluster's nodes, docs/cluster.md):
# workers at the user's priority, not Ray's niceness 15 (on a machine doing other work the
# replicas would yield to everything else); and Ray Serve's request path on one event loop
# per process and over gRPC (what RAY_SERVE_THROUGHPUT_OPTIMIZED turns on, without its
# direct ingress, which needs HAProxy): measured here, the CPU a 32-token streamed request
# costs the ingress, the proxy and the replica's Ray side went from about 0.4 s to 0.1 s
# (benchmarks/cluster.py, docs/cluster.md)
RAY_ENV = {
    "RAY_worker_niceness": "0",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
}


def plan(args: argparse.Namespace, config, usable_cores: int) -> dict:
    """What gets deployed, from the options and the driver's config: pure, for the tests."""
    local = args.address is None
    if args.autoscale:
        lo, hi = args.autoscale
        count = {"autoscaling_config": {
            "min_replicas": lo, "max_replicas": hi, "initial_replicas": max(lo, 1),
            "target_ongoing_requests": args.target_ongoing or config.scheduler.max_batch}}
        most = hi
    else:
        most = args.replicas or 1
        count = {"num_replicas": most}
    if args.replica_cpus:
        cpus = args.replica_cpus
    else:  # a local Ray: this machine's cores shared out; a cluster: 1 each, threads from each node's config
        cpus = max(1, usable_cores // most) if local else 1
    # engine threads: --threads; on a local Ray the CPUs given or shared out (replicas that share
    # this machine's cores must not each take all of them); on a cluster each node's config (the
    # count planned for that device), --replica-cpus being what Ray reserves there
    threads = args.threads or (cpus if local and (args.replica_cpus or most > 1) else None)
    actor = {"num_cpus": cpus}
    if args.ray_resource:
        actor["resources"] = dict(args.ray_resource)
    return {
        "local": local, "cpus": cpus, "threads": threads,
        "replica": {**count, "ray_actor_options": actor,
                    # what one replica takes before Ray queues in front of it: its batch and its queue
                    "max_ongoing_requests": config.scheduler.max_batch + config.server.max_queue,
                    "max_queued_requests": config.server.max_queue * most,
                    "health_check_period_s": 5.0, "health_check_timeout_s": 30.0,
                    "graceful_shutdown_timeout_s": max(1.0, config.server.drain_s)},
        # the ingress holds every open request's stream: no CPU of its own to reserve, no cap of 5
        "ingress": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0}, "max_ongoing_requests": 10_000},
        "name": args.app_name or "liteinfer",
        "route_prefix": args.route_prefix or "/",
    }


def _deploy_error(e: BaseException, app_name: str) -> str:
    """The replica's own line when it could not start (Ray keeps it in the deployment's status
    message), else the first line of Ray's error."""
    from ray import serve

    from liteinfer_ray.deployments import StartError

    text = str(e)
    try:
        app = serve.status().applications.get(app_name)
        text = "\n".join([*(d.message for d in app.deployments.values()), app.message, text]) if app else text
    except Exception:  # the controller is gone too: Ray's error is all there is
        pass
    for line in text.splitlines():
        at = line.find(StartError.PREFIX)
        if at >= 0:
            return line[at + len(StartError.PREFIX):].strip()
    first = next((x.strip() for x in text.splitlines() if x.strip()), type(e).__name__)
    return f"Ray Serve could not deploy: {first}"


def serve_ray(args: argparse.Namespace) -> int:
    from liteinfer.core.catalog import allow_fetch, resolve_llm
    from liteinfer.core.plugins import check_model
    from liteinfer.hardware.cores import usable_cores
    from liteinfer.server.app import config_from_args
    from liteinfer.server.auth import load_api_keys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config_from_args(args)  # the flags checked here, once, before Ray starts
    if args.route_prefix is not None and not args.route_prefix.startswith("/"):
        raise LiteInferError(f"--route-prefix {args.route_prefix!r}: start it with /")
    p = plan(args, config, usable_cores())
    if p["local"] and not args.no_llm:  # this machine serves: a model not pulled fails here, in one line
        allow_fetch(False)
        check_model(resolve_llm(config.model), "llm", config)
    keys = load_api_keys(args.api_key, args.api_key_file, config.server.api_keys)
    replica_args = {k: v for k, v in vars(args).items() if k not in DRIVER_ONLY}
    settings = {"keys": keys, "limits": config.limits.model_dump(), "request_timeout_s": config.server.request_timeout_s,
                "protect_docs": config.server.protect_docs if config.server.protect_docs is not None else bool(keys)}

    # on use: Ray is the plugin's dependency, not liteinfer's (start-up time)
    import ray
    from ray import serve

    from liteinfer_ray.deployments import LiteInferIngress, LiteInferReplica

    if p["local"]:  # the Ray started here inherits these (a cluster's nodes: docs/cluster.md)
        for name, value in RAY_ENV.items():
            os.environ.setdefault(name, value)
    if not p["local"]:
        _check_reachable(args.address)
    try:
        if p["local"]:  # "local": a new Ray of its own, even where `ray start` left a cluster running
            ray.init(address="local", num_cpus=usable_cores(), include_dashboard=False, configure_logging=False)
        else:
            ray.init(address=args.address, configure_logging=False)
    except (ConnectionError, ValueError, RuntimeError) as e:
        what = "start a local Ray" if p["local"] else f"connect to Ray at {args.address}"
        raise LiteInferError(f"could not {what}: {(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None
    started_here = p["local"]
    try:
        serve.start(http_options={"host": config.server.host, "port": config.server.port})
        replica = LiteInferReplica.options(**p["replica"]).bind(replica_args, keys, p["threads"])
        app = LiteInferIngress.options(**p["ingress"]).bind(replica, settings)
        try:
            serve.run(app, name=p["name"], route_prefix=p["route_prefix"])
        except Exception as e:
            raise LiteInferError(_deploy_error(e, p["name"])) from None
        how = (f"autoscaling {args.autoscale[0]}-{args.autoscale[1]} replicas" if args.autoscale
               else f"{p['replica']['num_replicas']} replica{'s' * (p['replica']['num_replicas'] > 1)}")
        prefix = p["route_prefix"].rstrip("/")
        where = "a local Ray" if p["local"] else f"Ray at {args.address}"
        print(f"liteinfer serving {config.model if not args.no_llm else 'one-shot models'} on "
              f"http://{config.server.host}:{config.server.port}{prefix} (Ray Serve on {where}: {how}, "
              f"{p['cpus']} CPU{'s' * (p['cpus'] > 1)} each){' (API key required)' if keys else ''}", flush=True)
        _wait_for_signal()
        print("stopping: taking the application down", file=sys.stderr, flush=True)
        serve.delete(p["name"])
    finally:
        if started_here:
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
    return 0


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """HOST:PORT or ray://HOST:PORT answers a TCP connect: Ray itself waits minutes on a wrong
    address before it says so."""
    import socket

    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise LiteInferError(f"--address {address!r}: give HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise LiteInferError(f"--address {address}: nothing answers there ({e.strerror or e}); is "
                             "`ray start --head` running on that machine, and the port open?") from None


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal while Ray shuts down ends it at once
        signal.signal(sig, lambda *_: os._exit(130))

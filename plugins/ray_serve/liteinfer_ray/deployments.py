"""The two Ray Serve deployments of `serve --ray`.

- `LiteInferReplica`: one liteinfer server without a socket (asgi.py): its own engine and
  scheduler, configured on its own node (that node's --config file, serve's flags on top).
  Ray starts N of them (or autoscales them on their ongoing requests), checks their health
  and starts a dead one again. Each registers the affinity key of every request it serves
  as a multiplexed model id, so Ray routes that key's later requests to it; and reports
  its /metrics text, pid and node to the ingress every REPORT_S seconds.
- `LiteInferIngress`: the HTTP side (Ray's proxy hands it the requests): the same limits and
  API keys as the one-box server, the affinity key (affinity.py), the request sent to a
  replica and its answer streamed back. A replica that dies before it sent any body byte
  (queued, prefilling, or a non-streamed answer not finished) costs the client nothing: the
  request goes to another replica, and after RETRY_S without one it is answered 503 with
  Retry-After. A stream that already started ends with an error event instead (its tokens
  cannot be taken back). /metrics merges the replicas' reports (metrics.py); /cluster lists
  the replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time

import ray
from ray import serve
from ray.exceptions import LocalRayletDiedError, NodeDiedError, RayActorError, WorkerCrashedError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from liteinfer_ray.affinity import CHAT_PATHS, PROMPT_PATHS, affinity_key
from liteinfer_ray.asgi import Lifespan, call, request_dict
from liteinfer_ray.metrics import merge

log = logging.getLogger("liteinfer.ray")

REPLICA = "LiteInferReplica"
INGRESS = "LiteInferIngress"
REPORT_S = 2.0  # how often a replica reports to the ingress (the staleness of /metrics)
STALE_S = 3 * REPORT_S  # a replica not heard from for this long is left out of /metrics and /cluster
RETRY_S = 30.0  # how long a request whose replica died may look for another before its 503
RETRYABLE = (RayActorError, WorkerCrashedError, NodeDiedError, LocalRayletDiedError, ReplicaUnavailableError,
             DeploymentUnavailableError)
REPLICA_HEADER = b"x-liteinfer-replica"


class StartError(RuntimeError):
    """A replica that cannot start: the driver prints this line (cli.py looks for the prefix)."""

    PREFIX = "liteinfer replica: "

    def __init__(self, node: str, message: str):
        super().__init__(f"{self.PREFIX}{message} (node {node})")


def _apply_flags(args: dict, threads: int | None):
    """serve's flags on this node's config file, as `liteinfer serve` applies them."""
    from liteinfer.server.app import config_from_args

    config = config_from_args(argparse.Namespace(**args))
    if threads and not args.get("threads"):  # --threads and the config's own win over the share
        config.engine.n_threads = config.engine.n_threads_batch = threads
    elif args.get("threads"):
        config.engine.n_threads_batch = args["threads"]
    return config


async def _remember(key: str) -> str:
    """A session "model" of Ray's multiplexing: registering the key is all it does (Ray's
    router then sends the key's requests here); the KV cells are the engine's prefix cache."""
    return key


@serve.deployment(name=REPLICA, logging_config={"enable_access_log": False})
class LiteInferReplica:
    async def __init__(self, args: dict, keys: list[str], threads: int | None):
        from liteinfer.core.catalog import allow_fetch, resolve_llm
        from liteinfer.core.errors import LiteInferError
        from liteinfer.core.plugins import check_model
        from liteinfer.server.app import create_app

        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as serve does (server/app.py _lean_process)
        self.node = ray.util.get_node_ip_address()
        ctx = serve.get_replica_context()
        self.id = ctx.replica_id.unique_id
        self.app_name = ctx.app_name
        self.started = time.time()
        try:
            self.config = config = _apply_flags(args, threads)
            allow_fetch(False)  # a replica never downloads: each node pulls its models (docs/cluster.md)
            if not args.get("no_llm"):
                check_model(resolve_llm(config.model), "llm", config)
            self.app = create_app(config, api_keys=keys, llm=not args.get("no_llm"),
                                  sys_root=args.get("sysfs") or "/sys")
        except LiteInferError as e:
            raise StartError(self.node, str(e)) from None
        self.services = self.app.state.services
        self.llm = self.services.get("llm")
        self.lifespan = Lifespan(self.app)
        await self.lifespan.startup()  # the model loads in a thread; wait for it without blocking the loop
        while self.llm is not None and not self.llm.ready and not self.llm.error:
            await asyncio.sleep(0.1)
        if self.llm is not None and self.llm.error:
            raise StartError(self.node, f"model {config.model}: {self.llm.error}")
        # the affinity keys this replica holds, registered with Ray's router (LRU): as many as the
        # engine keeps sequences in its KV cache, since an older prefix is gone from it anyway
        self.session = serve.multiplexed(max_num_models_per_replica=config.engine.n_seq_max)(_remember)
        self.headers = [(REPLICA_HEADER, self.id.encode())]
        self._ingress = None
        self._reporter = asyncio.create_task(self._report_loop())
        log.info("liteinfer replica %s ready on %s (pid %d, %s threads)", self.id, self.node, os.getpid(),
                 config.engine.n_threads or "auto")

    async def request(self, req: dict):
        """One HTTP request through this replica's app, streamed back (asgi.call)."""
        key = serve.get_multiplexed_model_id()
        if key:
            await self.session(key)
        async for item in call(self.app, req, self.headers):
            yield item

    def info(self) -> dict:
        scheduler = self.llm.scheduler if self.llm is not None else None
        return {"id": self.id, "pid": os.getpid(), "node": self.node, "started": self.started,
                "ready": all(getattr(s, "ready", True) for s in self.services.values()),
                "models": {kind: s.name for kind, s in self.services.items()},
                "threads": self.config.engine.n_threads,
                "metrics": self.app.state.metrics.render(scheduler).decode()}

    async def _report_loop(self) -> None:
        while True:
            try:
                if self._ingress is None:
                    self._ingress = serve.get_deployment_handle(INGRESS, app_name=self.app_name)
                await self._ingress.report.remote(self.info())
            except Exception as e:  # the ingress is (re)starting: the next round reports
                log.debug("report to the ingress failed: %s", e)
            await asyncio.sleep(REPORT_S)

    def check_health(self) -> None:
        """Ray's health check: a replica whose model failed, or whose scheduler thread died,
        is stopped and started again."""
        if self.llm is None:
            return
        if self.llm.error:
            raise RuntimeError(f"model failed: {self.llm.error}")
        thread = getattr(self.llm.scheduler, "_thread", None)
        if thread is not None and not thread.is_alive():
            raise RuntimeError("the scheduler thread stopped")

    async def __del__(self):
        if hasattr(self, "_reporter"):  # not when __init__ failed
            self._reporter.cancel()
            await self.lifespan.shutdown()  # services closed: the engine's memory goes back


def _error_body(status: int, message: str, type_: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "code": code}}).encode()


async def _send_json(send, status: int, body: bytes, headers: list | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


@serve.deployment(name=INGRESS, logging_config={"enable_access_log": False})
@serve.ingress()
class LiteInferIngress:
    def __init__(self, replicas, settings: dict):
        from liteinfer.core.config import LimitsSettings

        self.replicas = replicas.options(stream=True)
        self.settings = settings
        self.keys = list(settings["keys"])
        self.limits = LimitsSettings.model_validate(settings["limits"])
        self.first_timeout = settings["request_timeout_s"] + 30.0
        self.reports: dict[str, tuple[float, dict]] = {}
        self.counts = {"retried": 0, "unavailable": 0, "broken_streams": 0, "backpressure": 0}

    def __serve_build_asgi_app__(self):
        from liteinfer.server.limits import Lifecycle, LimitsMiddleware

        # the one-box server's limits and /metrics key, in front of everything
        return LimitsMiddleware(self.asgi, limits=self.limits, lifecycle=Lifecycle(), keys=self.keys,
                                protect_docs=self.settings["protect_docs"])

    # ---- what replicas report

    async def report(self, info: dict) -> None:
        self.reports[info["id"]] = (time.monotonic(), info)

    def live(self) -> list[dict]:
        now = time.monotonic()
        for rid in [r for r, (t, _) in self.reports.items() if now - t > STALE_S]:
            del self.reports[rid]
        return [info for _, info in sorted(self.reports.values(), key=lambda x: x[1]["started"])]

    def metrics_text(self) -> str:
        live = self.live()
        c = self.counts
        own = (
            "# HELP liteinfer_ray_replicas Replicas that reported in the last few seconds\n"
            "# TYPE liteinfer_ray_replicas gauge\n"
            f"liteinfer_ray_replicas {len(live)}\n"
            "# HELP liteinfer_ray_retried_total Requests sent to another replica after theirs died before answering\n"
            "# TYPE liteinfer_ray_retried_total counter\n"
            f"liteinfer_ray_retried_total {c['retried']}\n"
            "# HELP liteinfer_ray_unavailable_total Requests answered 503 (no replica within the retry window)\n"
            "# TYPE liteinfer_ray_unavailable_total counter\n"
            f"liteinfer_ray_unavailable_total {c['unavailable']}\n"
            "# HELP liteinfer_ray_broken_streams_total Streams ended with an error event: their replica died\n"
            "# TYPE liteinfer_ray_broken_streams_total counter\n"
            f"liteinfer_ray_broken_streams_total {c['broken_streams']}\n"
            "# HELP liteinfer_ray_backpressure_total Requests answered 429: every replica and Ray's queue full\n"
            "# TYPE liteinfer_ray_backpressure_total counter\n"
            f"liteinfer_ray_backpressure_total {c['backpressure']}\n"
        )
        return merge({info["id"]: info["metrics"] for info in live}, own)

    # ---- HTTP

    async def asgi(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                await send({"type": msg["type"] + ".complete"})
                if msg["type"] == "lifespan.shutdown":
                    return
        if scope["type"] != "http":
            return
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):  # under --route-prefix the replica's app still sees /v1/...
            path = path[len(root):] or "/"
        method = scope["method"]
        if path == "/metrics" and method == "GET":  # the key was checked by LimitsMiddleware
            body = self.metrics_text().encode()
            return await send_text(send, body, b"text/plain; version=0.0.4")
        if path == "/cluster" and method == "GET":
            if self.keys and not _authorized(scope, self.keys):
                return await _send_json(send, 401, _error_body(
                    401, "invalid or missing API key (Authorization: Bearer KEY)", "authentication_error",
                    "invalid_api_key"), [(b"www-authenticate", b"Bearer")])
            live = [{k: v for k, v in info.items() if k != "metrics"} for info in self.live()]
            return await _send_json(send, 200, json.dumps({"replicas": live}).encode())
        chunks = []
        while True:  # LimitsMiddleware read it whole within the size and time limits: one message
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        key = ""
        if method == "POST" and path in CHAT_PATHS + PROMPT_PATHS and body:
            try:
                parsed = json.loads(body) if len(body) < 65536 else await asyncio.to_thread(json.loads, body)
            except ValueError:
                parsed = None  # the replica answers the 400
            key = affinity_key(path, parsed)
        await self.forward(request_dict(scope, body, path), key, send)

    async def forward(self, req: dict, key: str, send) -> None:
        handle = self.replicas.options(multiplexed_model_id=key) if key else self.replicas
        deadline = time.monotonic() + RETRY_S
        backoff = 0.1
        while True:
            gen = _NoCall()
            try:
                gen = handle.request.remote(req)  # may raise at once too (no replica, Ray's queue full)
                first = await asyncio.wait_for(gen.__anext__(), self.first_timeout)
                break
            except RETRYABLE as e:
                _cancel(gen)
                if time.monotonic() + backoff > deadline:
                    log.warning("no replica answered within %.0f s: %s", RETRY_S, type(e).__name__)
                    self.counts["unavailable"] += 1
                    return await _send_json(send, 503, _error_body(
                        503, "no replica is available; retry later", "server_error", "unavailable"),
                        [(b"retry-after", b"5")])
                self.counts["retried"] += 1
                log.info("replica gone before answering (%s): retrying", type(e).__name__)
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)
            except BackPressureError:
                _cancel(gen)
                self.counts["backpressure"] += 1
                return await _send_json(send, 429, _error_body(
                    429, "server busy: every replica is full and so is Ray's queue in front of them; retry later",
                    "rate_limit_error", "queue_full"), [(b"retry-after", b"1")])
            except asyncio.TimeoutError:
                _cancel(gen)
                return await _send_json(send, 504, _error_body(
                    504, "no answer from the replica in time", "server_error", "timeout"))
            except (asyncio.CancelledError, GeneratorExit):
                _cancel(gen)
                raise
            except Exception as e:  # the replica's own failure (a bug): one JSON error, as the server's
                _cancel(gen)
                log.warning("replica failed: %s", e)
                return await _send_json(send, 500, _error_body(
                    500, f"internal error: {type(e).__name__}", "server_error", "internal"))
        await send({"type": "http.response.start", "status": first["status"], "headers": first["headers"]})
        await send({"type": "http.response.body", "body": first["body"], "more_body": first["more"]})
        if not first["more"]:
            return
        content_type = dict(first["headers"]).get(b"content-type", b"")
        try:
            async for item in gen:
                await send({"type": "http.response.body", "body": item["body"], "more_body": item["more"]})
                if not item["more"]:
                    return
        except (asyncio.CancelledError, GeneratorExit):  # the client went away: so does the replica's work
            _cancel(gen)
            raise
        except Exception as e:  # the replica died mid-stream: end the stream, never leave it hanging
            self.counts["broken_streams"] += 1
            log.warning("stream broken: %s", type(e).__name__)
            await send({"type": "http.response.body", "body": _stream_error(content_type), "more_body": False})
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _cancel(response) -> None:
    """Cancel a call to a replica; a call that already failed raises its error again from
    cancel() (Ray re-reads the result), which here is already handled."""
    try:
        response.cancel()
    except Exception:  # the call is over either way
        pass


class _NoCall:
    """Stands in for the response of a call that raised before it existed."""

    def cancel(self) -> None:
        pass


def _stream_error(content_type: bytes) -> bytes:
    error = {"error": {"message": "the replica serving this stream stopped; retry the request",
                       "type": "server_error", "code": "replica_died"}}
    if content_type.startswith(b"text/event-stream"):
        return b"data: " + json.dumps(error).encode() + b"\n\n"
    if b"ndjson" in content_type:
        return json.dumps({"error": error["error"]["message"]}).encode() + b"\n"
    return b""


def _authorized(scope: dict, keys: list[str]) -> bool:
    from liteinfer.server.auth import check_bearer

    auth = dict(scope.get("headers", [])).get(b"authorization")
    return check_bearer(auth.decode("latin-1") if auth is not None else None, keys)


async def send_text(send, body: bytes, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

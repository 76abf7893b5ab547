"""Running the app under uvicorn with a graceful drain on SIGTERM / SIGINT.

The first signal starts the drain: /health answers 503 {"status": "draining"} (a load
balancer stops sending work), new work requests get 503 "shutting_down", and open requests
(streams too) have `server.drain_s` seconds to finish. Whatever is still running then ends
with a final chunk carrying finish_reason "abort" and an error event (a non-streaming request
gets a 503), uvicorn closes the connections, the model unloads, and the process exits 0.
A second signal skips the rest of the drain; a third stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import uvicorn

from liteinfer.core.config import DeviceConfig
from liteinfer.server.limits import Lifecycle, protocol_class

log = logging.getLogger("liteinfer.server")
ABORT_MESSAGE = "server shutting down: the answer was cut at the end of the drain time"
ABORT_FLUSH_S = 3.0  # after the abort, time for the final chunks to reach the clients


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, drain_s: float):
        super().__init__(config)
        self.lifecycle, self.drain_s = lifecycle, drain_s
        self._signals = 0
        self._skip = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame) -> None:  # noqa: ARG002 - signal handler signature
        # uvicorn's re-raises the signal after shutdown (exit status 143); a drained server exits 0
        self._signals += 1
        if self._loop is None:  # still starting: nothing to drain
            self.should_exit = True
        elif self._signals == 1:
            self._loop.call_soon_threadsafe(self._start_drain, signal.Signals(sig).name)
        elif self._signals == 2:
            log.warning("second signal: ending open requests now")
            self._skip = True
        else:
            self.should_exit = self.force_exit = True

    def _start_drain(self, name: str) -> None:
        self._drain_task = self._loop.create_task(self.drain(name))

    async def drain(self, why: str = "shutdown") -> None:
        life = self.lifecycle
        life.draining = True
        log.warning("%s: draining %d open request(s), up to %g s", why, life.in_flight, self.drain_s)
        deadline = time.monotonic() + self.drain_s
        while life.in_flight and time.monotonic() < deadline and not self._skip:
            await asyncio.sleep(0.05)
        if life.in_flight:
            n = life.abort(ABORT_MESSAGE)
            log.warning("drain time over: ended %d request(s) with finish_reason \"abort\"", n)
            deadline = time.monotonic() + ABORT_FLUSH_S
            while life.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        self.should_exit = True


def run(app, config: DeviceConfig, lifecycle: Lifecycle) -> None:
    """uvicorn.run with this server's limits and the drain (blocks until shut down)."""
    limits = config.limits
    uv = uvicorn.Config(app, host=config.server.host, port=config.server.port, log_level="warning",
                        access_log=False,  # access logs cost CPU that the engine's threads need
                        http=protocol_class(limits), h11_max_incomplete_event_size=limits.max_header_bytes,
                        # loop pinned: with uvloop installed (ray[serve] pulls it) "auto" would switch to it
                        loop="asyncio",
                        timeout_keep_alive=5, timeout_graceful_shutdown=5, lifespan="on")
    DrainingServer(uv, lifecycle, config.server.drain_s).run()

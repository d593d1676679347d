"""gRPC health (``grpc.health.v1``) whose Watch streams end when the sidecar stops.

grpc's asyncio health servicer keeps every Watch stream open for as long as the
server runs, so a graceful stop would wait out its whole grace period for them.
Here Check is grpc's own; Watch follows the same statuses, and once the sidecar
stops (:meth:`Health.end_watches`) each watcher is told NOT_SERVING and its
stream ends. The server's stop then waits only for the admission calls in
flight, and ends as soon as their last statuses are sent.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeAlias

from grpc_health.v1 import health, health_pb2

Status: TypeAlias = health_pb2.HealthCheckResponse.ServingStatus
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class Health(health.aio.HealthServicer):  # type: ignore[misc,name-defined]
    """``HealthServicer`` with watches that :meth:`end_watches` ends."""

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, Status] = {}
        self._frozen = False  # after enter_graceful_shutdown, set() changes nothing
        self._ending = False
        self._changed = asyncio.Condition()
        #: Watch streams open.
        self.watching = 0

    async def set(self, service: str, status: Status) -> None:
        await super().set(service, status)
        if not self._frozen:
            await self._publish({service: status})

    async def enter_graceful_shutdown(self) -> None:
        await super().enter_graceful_shutdown()
        if not self._frozen:
            self._frozen = True
            await self._publish(dict.fromkeys(self._statuses, NOT_SERVING))

    async def end_watches(self) -> None:
        """Tell every watcher NOT_SERVING and end its stream; a later Watch gets the
        same answer and ends at once."""
        self._ending = True
        self._frozen = True
        await self._publish(dict.fromkeys(self._statuses, NOT_SERVING))

    async def _publish(self, statuses: dict[str, Status]) -> None:
        async with self._changed:
            self._statuses.update(statuses)
            self._changed.notify_all()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        self.watching += 1
        try:
            await self._watch(request, context)
        finally:
            self.watching -= 1

    async def _watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        last: Status | None = None
        while True:
            async with self._changed:
                while True:
                    ending = self._ending
                    status = (
                        NOT_SERVING
                        if ending
                        else self._statuses.get(request.service, SERVICE_UNKNOWN)
                    )
                    if status != last or ending:
                        break
                    await self._changed.wait()
            if status != last:  # written outside the lock: a slow watcher holds up no one
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if ending:
                return

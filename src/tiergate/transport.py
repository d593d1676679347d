"""gRPC core's server transport for tiergate's processes: the promise-based one.

Under overload gRPC core turns away the calls beyond its queue for the event
loop (``grpc_server.pending_limits``). On its default HTTP/2 server transport it
ends them ``CANCELLED`` (a stream reset; no setting maps that status); on its
promise-based transport, an experiment of gRPC 1.85 named ``ph2_server`` in
``GRPC_EXPERIMENTS``, it ends them ``RESOURCE_EXHAUSTED`` ("Too many pending
requests for this server"), the status a client knows to retry later.

gRPC core reads ``GRPC_EXPERIMENTS`` once, when its library loads (``import
grpc``): setting it later changes nothing. Importing this module therefore
names ``ph2_server`` there unless the variable names it already (as
``ph2_server``, or ``-ph2_server`` to keep the default transport), and it must be
imported before grpc is: ``tiergate.cli`` imports it first, so every ``tiergate``
command has it. A program that runs a :class:`tiergate.server.Sidecar` itself
sets the variable before it imports grpc.

That transport ends every open call with a reset (``INTERNAL`` to the client)
when the server stops, whatever the grace period: the sidecar therefore ends or
finishes every call of its own before it stops the gRPC server (see
``Sidecar.stop``).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

#: gRPC core's experiment: the promise-based HTTP/2 server transport.
PROMISE_TRANSPORT = "ph2_server"


def named(value: str) -> set[str]:
    """The experiments a ``GRPC_EXPERIMENTS`` value names, on or off (``-name``)."""
    return {e.strip().lstrip("-") for e in value.split(",") if e.strip()}


def enabled(environ: MutableMapping[str, str] | None = None) -> bool:
    """Whether ``GRPC_EXPERIMENTS`` turns the promise-based server transport on."""
    env = os.environ if environ is None else environ
    return PROMISE_TRANSPORT in {e.strip() for e in env.get("GRPC_EXPERIMENTS", "").split(",")}


def prefer_promise_transport(environ: MutableMapping[str, str] | None = None) -> bool:
    """Name the promise-based server transport in ``GRPC_EXPERIMENTS`` unless the
    variable names it already; whether it is on."""
    env = os.environ if environ is None else environ
    current = env.get("GRPC_EXPERIMENTS", "")
    if PROMISE_TRANSPORT not in named(current):
        env["GRPC_EXPERIMENTS"] = f"{current},{PROMISE_TRANSPORT}" if current else PROMISE_TRANSPORT
    return enabled(env)


prefer_promise_transport()

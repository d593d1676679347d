"""The gRPC sidecar: ``tiergate.v1.AdmissionControl`` over the policy layer."""

from tiergate.server.app import Sidecar, StartupError, run, serve
from tiergate.server.grpc_server import SERVICE_NAME

__all__ = ["SERVICE_NAME", "Sidecar", "StartupError", "run", "serve"]

"""The gRPC sidecar: ``tiergate.v1.AdmissionControl`` over the policy layer."""

from tiergate.server.app import SERVICE_NAME, Sidecar, StartupError, run, serve

__all__ = ["SERVICE_NAME", "Sidecar", "StartupError", "run", "serve"]

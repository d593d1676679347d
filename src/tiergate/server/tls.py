"""TLS for the gRPC port and the HTTP listeners (webhook receiver, metrics).

``tls_cert`` and ``tls_key`` are PEM files (the certificate may be a chain);
with ``tls_client_ca`` clients must present a certificate signed by one of its
CAs (mutual TLS) on every listener. Errors name the setting.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from tiergate.config import ConfigError, ServeConfig

__all__ = ["grpc_credentials", "http_context"]


def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror}") from None


def grpc_credentials(config: ServeConfig) -> grpc.ServerCredentials | None:
    """The gRPC port's credentials; None: plaintext."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    http_context(config)  # the same files, checked here with a clear error
    cert = _read("tls_cert", config.tls_cert)
    key = _read("tls_key", config.tls_key)
    ca = _read("tls_client_ca", config.tls_client_ca) if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def http_context(config: ServeConfig) -> ssl.SSLContext | None:
    """The HTTP listeners' TLS context; None: plaintext."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except FileNotFoundError as e:
        key = "tls_cert" if not config.tls_cert.exists() else "tls_key"
        raise ConfigError(key, f"file not found: {e.filename}") from None
    except (OSError, ssl.SSLError) as e:
        raise ConfigError("tls_cert", f"cannot load {config.tls_cert} with its key: {e}") from None
    if config.tls_client_ca is not None:
        try:
            context.load_verify_locations(cafile=config.tls_client_ca)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError("tls_client_ca", f"cannot load {config.tls_client_ca}: {e}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context

"""Transport security: TLS / mutual-TLS credentials and bearer-token authentication.

The token is compared in constant time; health checks and reflection stay open so probes and
tooling work without it. A refused call never reaches the service: nothing is scored or
counted as traffic, only detector_errors_total{code="UNAUTHENTICATED"}.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import grpc

from detector.errors import ConfigError

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def read_secret(path: str | Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not data.strip():
        raise ConfigError(f"{what} {path} is empty")
    return data


def server_credentials(cert: str, key: str, client_ca: str | None) -> grpc.ServerCredentials:
    """TLS with the server's certificate chain and key; with ``client_ca``, clients must present a
    certificate signed by it (mutual TLS)."""
    ca = read_secret(client_ca, "client CA") if client_ca else None
    return grpc.ssl_server_credentials([(read_secret(key, "TLS key"), read_secret(cert, "TLS certificate"))],
                                       root_certificates=ca, require_client_auth=ca is not None)


def client_credentials(ca: str | None, cert: str | None, key: str | None) -> grpc.ChannelCredentials | None:
    """A client's TLS: trust ``ca`` (the system's roots without it); with ``cert`` and ``key``, present that
    certificate to a server that asks for one (mutual TLS). None when none of them is given (plaintext)."""
    if (cert is None) != (key is None):
        raise ConfigError("give --tls-cert and --tls-key together (the client certificate and its key)")
    if ca is None and cert is None:
        return None
    return grpc.ssl_channel_credentials(read_secret(ca, "TLS CA") if ca else None,
                                        read_secret(key, "TLS key") if key else None,
                                        read_secret(cert, "TLS certificate") if cert else None)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str, on_denied=None):
        if not token:
            raise ConfigError("auth token is empty")
        self._expected = f"Bearer {token}".encode()
        self._on_denied = on_denied or (lambda method: None)

    def _authorized(self, metadata) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self._expected)
        return False

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES) or self._authorized(details.invocation_metadata):
            return handler
        method = details.method.rsplit("/", 1)[-1]
        on_denied = self._on_denied

        async def deny(_request, context):
            on_denied(method)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        async def deny_stream(_request, context):
            await deny(_request, context)
            yield  # pragma: no cover - abort raised above

        if handler.response_streaming:
            factory = (grpc.stream_stream_rpc_method_handler if handler.request_streaming
                       else grpc.unary_stream_rpc_method_handler)
            return factory(deny_stream, handler.request_deserializer, handler.response_serializer)
        factory = grpc.stream_unary_rpc_method_handler if handler.request_streaming else grpc.unary_unary_rpc_method_handler
        return factory(deny, handler.request_deserializer, handler.response_serializer)

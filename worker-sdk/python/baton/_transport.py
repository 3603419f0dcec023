"""Channels to the broker: plaintext or TLS, with the token on every call.

A broker run with ``--tokens`` wants ``authorization: Bearer <token>``
metadata on every call; one run with ``--tls-cert`` speaks TLS, and with
``--tls-client-ca`` it wants a client certificate of workers. The client
(sync ``grpc``) and the worker (``grpc.aio``) open their channels here so
both behave the same.

The token is added by a client interceptor (sync) or per call (the
worker's one stream), not by call credentials: gRPC refuses call
credentials on a plaintext channel, and a token over plaintext on loopback
is a legitimate local setup.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import grpc
import grpc.aio

PemSource = Union[str, bytes, "os.PathLike[str]"]
"""A PEM: ``bytes`` are the PEM itself; a ``str`` or path names a file (a
``str`` that starts with ``-----BEGIN`` is taken as the PEM text)."""


@dataclass(frozen=True)
class Tls:
    """TLS settings of the connection to the broker.

    ``ca``: the CA (PEM) that signed the broker's certificate; ``None``
    trusts the system's roots. ``cert`` and ``key``: this process's client
    certificate and key (PEM), for a broker with mutual TLS (required there
    for workers). ``domain``: the name the broker's certificate carries,
    when it differs from the address's host (e.g. connecting by IP).
    """

    ca: Optional[PemSource] = None
    cert: Optional[PemSource] = None
    key: Optional[PemSource] = None
    domain: Optional[str] = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls: cert and key go together (a client certificate needs its key)")
        if self.domain is not None and not isinstance(self.domain, str):
            raise ValueError(f"tls: domain must be a str (got {self.domain!r})")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca, "ca"),
            private_key=_pem(self.key, "key"),
            certificate_chain=_pem(self.cert, "cert"),
        )

    def options(self) -> Sequence[Tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.domain)] if self.domain else []


_TLS_KEYS = ("ca", "cert", "key", "domain")


def tls_config(value: Any) -> Optional[Tls]:
    """Normalizes ``Baton(tls=...)``: ``None``/``False`` (plaintext), ``True``
    (TLS trusting the system's roots), a :class:`Tls`, a dict, or any object
    with ``ca``/``cert``/``key``/``domain`` attributes."""
    if value is None or value is False:
        return None
    if value is True:
        return Tls()
    if isinstance(value, Tls):
        return value
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(_TLS_KEYS))
        if unknown:
            raise ValueError(f"tls: unknown key(s) {unknown}; expected some of {list(_TLS_KEYS)}")
        return Tls(**dict(value))
    if any(hasattr(value, k) for k in _TLS_KEYS):
        return Tls(**{k: getattr(value, k, None) for k in _TLS_KEYS})
    raise ValueError(f"tls must be True, a dict or a baton.Tls (got {value!r})")


def check_token(token: Optional[str]) -> Optional[str]:
    """The token, stripped (a newline read from a file); ``None`` for none."""
    if token is None:
        return None
    if not isinstance(token, str):
        raise ValueError("token must be a str")
    token = token.strip()
    if not token:
        return None
    if not all(33 <= ord(c) <= 126 for c in token):
        raise ValueError("token must be visible ASCII (no spaces or control characters)")
    return token


def metadata(token: Optional[str]) -> Tuple[Tuple[str, str], ...]:
    """The call metadata that carries ``token``."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def _pem(source: Optional[PemSource], what: str) -> Optional[bytes]:
    if source is None:
        return None
    if isinstance(source, bytes):
        return source
    if isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
        return source.encode()
    try:
        with open(source, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"tls: cannot read {what} {os.fspath(source)!r}: {exc.strerror}") from None


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the token's metadata to every call of a sync channel."""

    def __init__(self, token: str) -> None:
        self._metadata = metadata(token)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(
            details.method,
            details.timeout,
            list(details.metadata or ()) + list(self._metadata),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


RECONNECT_OPTIONS: Tuple[Tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
"""gRPC's own reconnect backoff, set to the worker's (0.1 s doubling to 2 s).

gRPC's default starts at 1 s and grows by 1.6 up to 120 s. A process keeps
one channel per address (the client's), and channels of one process share
their connections to an address, and that backoff with them: a worker whose
tasks had submitted work (so its client channel was open) got its reconnect
attempts refused by gRPC itself, without a connection being tried, for
seconds after the broker was back."""

WORKER_OPTIONS: Tuple[Tuple[str, Any], ...] = RECONNECT_OPTIONS + (("grpc.use_local_subchannel_pool", 1),)
"""The worker's session channel, new for each attempt, also takes a
connection of its own, so no other channel's backoff delays an attempt:
the worker's backoff alone decides when it connects."""


def sync_channel(address: str, token: Optional[str], tls: Optional[Tls]) -> Tuple[grpc.Channel, grpc.Channel]:
    """``(raw, usable)``: the channel to close, and the one to call through
    (the raw one with the token interceptor, if there is a token)."""
    if tls is None:
        raw = grpc.insecure_channel(address, options=RECONNECT_OPTIONS)
    else:
        raw = grpc.secure_channel(address, tls.credentials(), options=RECONNECT_OPTIONS + tuple(tls.options()))
    usable = grpc.intercept_channel(raw, _Bearer(token)) if token else raw
    return raw, usable


def aio_channel(address: str, tls: Optional[Tls]) -> grpc.aio.Channel:
    """The worker's channel; its stream carries :func:`metadata` itself."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=WORKER_OPTIONS)
    return grpc.aio.secure_channel(address, tls.credentials(), options=WORKER_OPTIONS + tuple(tls.options()))

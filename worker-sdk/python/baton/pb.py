"""The generated ``baton.v1`` protocol: messages, enums and the three service stubs.

The friendly API (``Baton``, ``chain``, ``throttle``) covers the usual work;
this module is for the rest, e.g. the Admin service::

    from baton import pb
    workers = pb.AdminStub(app.channel).ListWorkers(pb.ListWorkersRequest()).workers

The stubs are generated from ``proto/baton/v1/baton.proto`` when the package is
built (see ``tools/generate_protos.py``); they are not in git.
"""

from typing import Any

try:
    from ._pb.baton_pb2 import *  # noqa: F401,F403
    from ._pb import baton_pb2_grpc as _grpc
except ImportError as exc:  # pragma: no cover - only on a broken checkout
    raise ImportError(
        "baton's generated gRPC stubs are missing or do not match the installed grpcio/"
        "protobuf: reinstall with `pip install ./worker-sdk/python`, or run "
        "`python worker-sdk/python/tools/generate_protos.py` in a source checkout"
    ) from exc

# grpcio generates untyped stubs; their calls return the typed messages above.
BrokerStub: Any = _grpc.BrokerStub
WorkerStub: Any = _grpc.WorkerStub
AdminStub: Any = _grpc.AdminStub

"""A worker whose brokers are standbys (no leader elected yet) keeps asking
every 0.1 s: after a round in which a standby answered it pauses only the
backoff's first step and does not grow it (docs/deployment.md, rule 5)."""

import threading
import time
from concurrent import futures

import grpc

from baton import Baton
from baton._pb import baton_pb2_grpc


class NoLeaderYet(baton_pb2_grpc.WorkerServicer):
    def __init__(self):
        self.sessions = []

    def Session(self, request_iterator, context):  # noqa: N802 - the gRPC method's name
        self.sessions.append(time.monotonic())
        context.set_trailing_metadata((("baton-standby", "1"),))
        context.abort(grpc.StatusCode.UNAVAILABLE, "this broker is a standby; no leader is known yet")


def test_a_worker_asks_standbys_again_without_growing_its_backoff():
    standby = NoLeaderYet()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    baton_pb2_grpc.add_WorkerServicer_to_server(standby, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    app = Baton(f"127.0.0.1:{port}")
    worker = app.worker(concurrency=1, name="patient")
    thread = threading.Thread(target=worker.run, daemon=True)
    try:
        thread.start()
        time.sleep(2.0)
    finally:
        worker.stop()
        thread.join(10)
        server.stop(0)
    assert not thread.is_alive()
    gaps = [b - a for a, b in zip(standby.sessions, standby.sessions[1:])]
    # A growing backoff (0.1, 0.2, 0.4, 0.8 s) would ask 5 times in 2 s, with gaps up to 0.8 s.
    assert len(standby.sessions) >= 8 and max(gaps) < 0.5, [round(g, 2) for g in gaps]

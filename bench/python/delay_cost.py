"""What one lone ``delay()`` costs the thread that calls it.

    python bench/python/delay_cost.py --baton-bin target/release/baton [--calls 1000]

Starts its own broker on a free 127.0.0.1 port (temporary data directory,
no worker: the chains wait in their queue), then times ``N`` calls of
``noop.delay(i)``, each alone: the previous one acknowledged (``app.flush()``)
and a 2 ms pause before the next, as a web request's single submission is.
Prints the median and p90 of the calling thread's wall time per call, and the
process's CPU per call (every thread: the caller's and gRPC's). Stops the
broker it started, by PID (docs/benchmarks.md, "The client's delay()").
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baton-bin", required=True)
    p.add_argument("--calls", type=int, default=1000)
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tempfile.mkdtemp()
    broker = subprocess.Popen([args.baton_bin, "serve", "--listen", f"127.0.0.1:{port}", "--data", data],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        os.environ["BATON_ADDR"] = f"127.0.0.1:{port}"
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import baton_tasks

        app, noop = baton_tasks.app, baton_tasks.noop
        deadline = time.monotonic() + 30
        while True:  # the broker is up once a submission is acknowledged
            try:
                noop.delay(-1)
                app.flush()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        for _ in range(50):  # warm-up
            noop.delay(-1)
            app.flush()
        walls = []
        cpu = 0.0
        for i in range(args.calls):
            c, t = time.process_time(), time.perf_counter()
            noop.delay(i)
            walls.append(time.perf_counter() - t)
            app.flush()
            cpu += time.process_time() - c
            time.sleep(0.002)
        walls.sort()
        print(f"lone delay(), {args.calls} calls: calling thread p50 {walls[len(walls) // 2] * 1e6:.0f} us, "
              f"p90 {walls[len(walls) * 9 // 10] * 1e6:.0f} us; "
              f"process CPU per call (delay and its answer) {cpu / args.calls * 1e6:.0f} us")
    finally:
        broker.terminate()
        broker.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m baton``: the command line (for now, the ``worker`` command).

::

    python -m baton worker --app mymodule:app --queues heavy --concurrency 1
    python -m baton worker --app mymodule:app --pool processes -c 8   # CPU-bound bodies

Option names follow Celery's where they exist (``-A``, ``-Q``, ``-c``,
``-P``, ``-n``, ``-l``), so muscle memory carries over. A secured broker::

    BATON_TOKEN=... python -m baton worker -A mymodule:app --tls-ca ca.pem \\
        --tls-cert worker.pem --tls-key worker.key
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any, List, Optional, Sequence, cast

from . import _failover
from .app import Baton
from .errors import WorkerConfigError
from .worker import POOLS


def _queues(values: Sequence[str]) -> List[str]:
    """``-Q heavy,general`` and ``-Q heavy -Q general`` both mean [heavy, general]."""
    out: List[str] = []
    for value in values:
        out += [q.strip() for q in value.split(",") if q.strip()]
    return out


def _prefetch(value: str) -> Optional[int]:
    """``--prefetch auto`` (None: the worker's default window) or a count >= 0."""
    if value == "auto":
        return None
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, not {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError("must be at least 0")
    return n


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m baton", description="Baton Python SDK")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    w = commands.add_parser("worker", help="run a worker for an app's tasks until SIGTERM")
    w.add_argument(
        "-A",
        "--app",
        required=True,
        help="the Baton app, as module:attribute; or a module, for its `app` (or `celery`) attribute or, "
        "failing that, the baton.celery tasks (shared_task) that importing it registered",
    )
    w.add_argument(
        "-Q",
        "--queues",
        action="append",
        default=[],
        help="queues to take tasks from, comma-separated or repeated (default: general)",
    )
    w.add_argument("-c", "--concurrency", type=int, default=1, help="tasks run at once (default 1)")
    w.add_argument(
        "--prefetch",
        type=_prefetch,
        default=None,
        metavar="N|auto",
        help="assignments held beyond --concurrency, waiting for a free slot, so short tasks never wait "
        "for the next one to arrive; their leases and timeouts run from assignment. Default auto: "
        "7 x concurrency, growing to up to 31 x while tasks are short, or 0 for a worker of the heavy "
        "queue; N fixes it; 0 turns it off (docs/prefetch.md)",
    )
    w.add_argument(
        "-P",
        "--pool",
        choices=POOLS,
        default="threads",
        help="where plain task bodies run: threads of this process (default), or child processes "
        "(for CPU-bound bodies; -c of them)",
    )
    w.add_argument("-n", "--name", help="worker name shown in inspection (default host:pid)")
    w.add_argument("-b", "--broker", help="broker address host:port, or several as h1:7070,h2:7070 (default: the app's)")
    w.add_argument(
        "--token",
        help="the worker's broker token (default: $BATON_TOKEN, then the app's); "
        "prefer the variable: arguments show in `ps`",
    )
    w.add_argument("--tls", action="store_true", help="use TLS, trusting the system's roots")
    w.add_argument("--tls-ca", metavar="FILE", help="use TLS, trusting this CA (PEM)")
    w.add_argument("--tls-cert", metavar="FILE", help="client certificate (PEM), for mutual TLS")
    w.add_argument("--tls-key", metavar="FILE", help="key of --tls-cert (PEM)")
    w.add_argument("--tls-domain", metavar="NAME", help="the name in the broker's certificate, if not the host")
    w.add_argument(
        "-l",
        "--loglevel",
        default=os.environ.get("BATON_LOGLEVEL", "INFO"),
        help="logging level (default INFO)",
    )
    return p


def load_app(spec: str) -> Baton:
    """Import ``module:attribute`` and return the Baton app it names.

    The current directory is put on ``sys.path`` first, as ``python -m``
    would, so ``--app mymodule:app`` works from the project directory.

    A bare module (``--app proj``, Celery's ``-A proj`` habit) names its
    ``app`` or ``celery`` attribute if that is a Baton app; failing that, if
    importing it registered Celery-style tasks (``baton.celery.shared_task``
    or ``Task`` subclasses), the :mod:`baton.celery` app that serves them.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise ValueError(f"--app {spec!r}: expected module:attribute")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    if not attr:
        for candidate in ("app", "celery"):
            found = getattr(module, candidate, None)
            if isinstance(found, Baton):
                return found
        compat = sys.modules.get("baton.celery")
        if compat is not None and compat.get_current_app().tasks:
            return cast(Baton, compat.get_current_app())
        raise ValueError(
            f"--app {spec!r}: {module_name} has no Baton app named `app` (or `celery`) and registered no "
            "baton.celery task"
        )
    target: Any = module
    for part in (attr or "app").split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"--app {spec!r}: {module_name} has no attribute {attr or 'app'!r}") from None
    if not isinstance(target, Baton):
        raise ValueError(f"--app {spec!r} is a {type(target).__name__}, not a Baton app")
    return target


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.loglevel.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "worker":
        if args.concurrency < 1:
            print("--concurrency must be at least 1", file=sys.stderr)
            return 2
        try:
            app = load_app(args.app)
        except (ImportError, ValueError) as exc:
            print(f"cannot load the app: {exc}", file=sys.stderr)
            return 2
        if args.broker:
            try:
                _failover.split_addrs(args.broker, "--broker")
            except ValueError as exc:
                print(exc, file=sys.stderr)
                return 2
            app.address = args.broker
        try:
            if args.token:
                app.token = args.token
            tls = {k: v for k, v in (("ca", args.tls_ca), ("cert", args.tls_cert), ("key", args.tls_key),
                                     ("domain", args.tls_domain)) if v}
            if tls or args.tls:
                app.tls = tls or True
        except ValueError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        worker = app.worker(queues=_queues(args.queues) or None, concurrency=args.concurrency, name=args.name,
                            prefetch=args.prefetch, pool=args.pool)
        try:
            worker.run()
        except WorkerConfigError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands

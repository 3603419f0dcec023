"""`python -m baton worker` argument parsing and app loading."""

import subprocess
import sys

import pytest

from baton import Baton
from baton.cli import _queues, load_app, parser


def test_worker_arguments():
    a = parser().parse_args(["worker", "--app", "m:app", "--queues", "heavy", "--concurrency", "1"])
    assert (a.command, a.app, _queues(a.queues), a.concurrency) == ("worker", "m:app", ["heavy"], 1)


def test_celery_short_options_and_queue_lists():
    a = parser().parse_args(["worker", "-A", "m", "-Q", "heavy,general", "-Q", "x", "-c", "4", "-b", "h:1"])
    assert _queues(a.queues) == ["heavy", "general", "x"]
    assert (a.concurrency, a.broker) == (4, "h:1")


def test_defaults():
    a = parser().parse_args(["worker", "--app", "m"])
    assert _queues(a.queues) == [] and a.concurrency == 1 and a.broker is None


def test_pool_and_window_options():
    a = parser().parse_args(["worker", "--app", "m"])
    assert (a.pool, a.prefetch) == ("threads", None)  # the default window
    a = parser().parse_args(["worker", "-A", "m", "--pool", "processes", "--prefetch", "auto"])
    assert (a.pool, a.prefetch) == ("processes", None)
    a = parser().parse_args(["worker", "-A", "m", "-P", "threads", "--prefetch", "0"])
    assert (a.pool, a.prefetch) == ("threads", 0)
    for bad in (["--pool", "prefork"], ["--prefetch", "-1"], ["--prefetch", "lots"]):
        with pytest.raises(SystemExit):
            parser().parse_args(["worker", "-A", "m", *bad])


def test_app_is_required():
    with pytest.raises(SystemExit):
        parser().parse_args(["worker"])


def test_load_app_by_module_and_attribute():
    app = load_app("sample_tasks:app")
    assert isinstance(app, Baton) and "demo.slow" in app.tasks
    assert load_app("sample_tasks") is app  # attribute `app` by default


def test_load_app_errors():
    with pytest.raises(ValueError, match="no attribute"):
        load_app("sample_tasks:nope")
    with pytest.raises(ValueError, match="not a Baton app"):
        load_app("sample_tasks:fast")
    with pytest.raises(ImportError):
        load_app("no_such_module_here:app")


def test_module_entry_point_help(baton_env):
    out = subprocess.run([sys.executable, "-m", "baton", "worker", "--help"], capture_output=True, text=True, env=baton_env)
    assert out.returncode == 0 and "--concurrency" in out.stdout


def test_bad_app_exits_2(baton_env):
    out = subprocess.run(
        [sys.executable, "-m", "baton", "worker", "--app", "no_such_module_here:app"],
        capture_output=True,
        text=True,
        env=baton_env,
    )
    assert out.returncode == 2 and "cannot load the app" in out.stderr


def test_an_empty_broker_list_is_refused(capsys):
    from baton.cli import main

    assert main(["worker", "--app", "sample_tasks:app", "--broker", " , "]) == 2
    assert "--broker" in capsys.readouterr().err


def test_several_addresses_from_the_app_and_the_environment(monkeypatch):
    assert Baton(" h1:1 , h2:2 ,").client.brokers.list == ["h1:1", "h2:2"]
    monkeypatch.setenv("BATON_ADDR", "h1:1,h2:2")
    assert Baton().client.brokers.list == ["h1:1", "h2:2"]
    monkeypatch.setenv("BATON_ADDR", ",")
    with pytest.raises(ValueError, match=r"\$BATON_ADDR"):
        Baton().client

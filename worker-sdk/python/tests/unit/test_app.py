"""Task registration: default names, declared options, the @throttle decorator, no side effects."""

import subprocess
import sys
import textwrap

import pytest

from baton import Baton, Task, Throttle, throttle

import sample_tasks
from sample_tasks import app


def test_default_name_is_module_dot_function():
    assert sample_tasks.fast.name == "sample_tasks.fast"
    assert "sample_tasks.fast" in app.tasks


def test_explicit_name():
    assert sample_tasks.slow.name == "demo.slow"
    assert app.tasks["demo.slow"] is sample_tasks.slow


def test_declared_options():
    assert sample_tasks.slow.options == {"max_retries": 3}
    assert sample_tasks.heavy.options == {"heavy": True}
    assert sample_tasks.dangerous.options == {"throttle": 1}


def test_bare_throttle_under_app_task_declares_concurrency_one():
    assert sample_tasks.dangerous_seed_style.options["throttle"] == Throttle(concurrency=1)


def test_throttle_over_app_task_works_too():
    local = Baton("x:1")

    @throttle(concurrency=3, key="k")
    @local.task
    def t():
        pass

    assert t.options["throttle"] == Throttle(concurrency=3, key="k")


def test_explicit_throttle_option_wins_over_decorator():
    local = Baton("x:1")

    @local.task(throttle=5)
    @throttle
    def t():
        pass

    assert t.options["throttle"] == 5


def test_calling_a_task_runs_it_locally():
    assert isinstance(sample_tasks.fast, Task)
    assert sample_tasks.fast(3) == "fast 3"
    assert sample_tasks.fast.__name__ == "fast"


def test_async_tasks_are_detected():
    assert sample_tasks.coro.is_async and not sample_tasks.fast.is_async


def test_duplicate_names_are_refused():
    local = Baton("x:1")
    local.task(name="a.b")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        local.task(name="a.b")(lambda: 2)


def test_address_defaults_and_override(monkeypatch):
    monkeypatch.delenv("BATON_ADDR", raising=False)
    monkeypatch.delenv("BATON_ADDRESS", raising=False)
    assert Baton().address == "127.0.0.1:7070"
    monkeypatch.setenv("BATON_ADDR", "10.0.0.1:7")
    assert Baton().address == "10.0.0.1:7"
    b = Baton("h:1")
    b.address = "h:2"
    assert b.address == "h:2"


def test_baton_addr_is_the_variable_and_baton_address_a_deprecated_alias(monkeypatch, caplog):
    """Issue 22: the `baton` command and the Rust SDK read $BATON_ADDR; this SDK read
    $BATON_ADDRESS only, so with BATON_ADDR set a worker went to the default port."""
    import baton.app

    monkeypatch.setattr(baton.app, "_warned_deprecated", False)
    monkeypatch.setenv("BATON_ADDR", "10.0.0.1:7")
    monkeypatch.setenv("BATON_ADDRESS", "10.0.0.2:8")
    with caplog.at_level("WARNING", logger="baton"):
        assert Baton().address == "10.0.0.1:7"
    assert not caplog.records  # the old name is not read when the new one is set

    monkeypatch.delenv("BATON_ADDR")
    with caplog.at_level("WARNING", logger="baton"):
        assert Baton().address == "10.0.0.2:8"
        assert Baton().address == "10.0.0.2:8"
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["$BATON_ADDRESS is deprecated, use $BATON_ADDR (broker address 10.0.0.2:8)"]


def test_script_tasks_are_named_after_the_script(tmp_path, baton_env):
    """`python demo.py` must name tasks demo.x, as a worker with --app demo:app does."""
    script = tmp_path / "demo.py"
    script.write_text(
        textwrap.dedent(
            """
            from baton import Baton
            app = Baton("x:1")
            @app.task
            def fast(): pass
            print(fast.name)
            """
        )
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=baton_env)
    assert out.stdout.strip() == "demo.fast", out.stderr


def test_import_has_no_side_effects(baton_env):
    """Importing baton and building an app opens no connection and starts no thread."""
    code = textwrap.dedent(
        """
        import threading, sys
        before = threading.active_count()
        import baton
        app = baton.Baton("127.0.0.1:1")
        @app.task
        def f(): pass
        sig = f.si()
        sig.to_pb()
        assert threading.active_count() == before, threading.enumerate()
        assert app._client is None
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=baton_env)
    assert out.stdout.strip() == "ok", out.stderr

"""The README's seed examples run as written: workers from `--app demo:app`, then `python demo.py`."""

import os
import re
import subprocess
import sys
from pathlib import Path

import baton

from baton_harness import wait_until

README = Path(__file__).resolve().parents[2] / "README.md"


def demo_source():
    text = README.read_text()
    section = text.split("## The seed's examples", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_demo_runs_as_written(broker, tmp_path):
    source = demo_source().replace('Baton("127.0.0.1:7070")', f'Baton("{broker.address}")')
    (tmp_path / "demo.py").write_text(source)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    root = str(Path(baton.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    procs = []
    try:
        for name, args in (("general", ["--concurrency", "4"]), ("heavy", ["--queues", "heavy"])):
            log = open(tmp_path / f"{name}.log", "wb")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "baton", "worker", "--app", "demo:app", "--name", name, *args],
                    cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                )
            )
            log.close()
        wait_until(lambda: len(broker.workers()) == 2, 20, "both README workers")
        out = subprocess.run(
            [sys.executable, "demo.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "all done"
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
    general = (tmp_path / "general.log").read_text()
    heavy = (tmp_path / "heavy.log").read_text()
    prints = [l for l in general.splitlines() if l.startswith("** ")]
    slow = [l for l in prints if l.startswith(("** Start", "** End"))]
    assert slow == ["** Start 10", "** End 10", "** Start 10", "** End 10"], general
    assert prints.count("** Fast 10") == 2
    assert sorted(l for l in prints if l.startswith("** Dangerous")) == [f"** Dangerous {i}" for i in range(3)]
    assert "** Heavy 1" in heavy and "** Heavy" not in general

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
    (tmp_path / "demo.py").write_text(demo_source())
    # The script, as written, finds the broker through $BATON_ADDR.
    env = dict(os.environ, PYTHONUNBUFFERED="1", BATON_ADDR=broker.address)
    env.pop("BATON_ADDRESS", None)
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
    # Bodies print from several threads: print() writes its text and its
    # newline apart, so two prints may share a line. Read them as tokens.
    prints = re.findall(r"\*\* [A-Z][a-z]+ \d+", general)
    slow = [l for l in prints if l.startswith(("** Start", "** End"))]
    assert slow == ["** Start 10", "** End 10", "** Start 10", "** End 10"], general
    assert prints.count("** Fast 10") == 2
    # The order the README shows: each fast after its own slow, the first
    # one while the second slow runs (it starts once the first leaves the throttle).
    seed = [l for l in prints if l.startswith(("** Start", "** End", "** Fast"))]
    assert seed[:2] == ["** Start 10", "** End 10"] and seed[-2:] == ["** End 10", "** Fast 10"], general
    assert sorted(seed[2:4]) == ["** Fast 10", "** Start 10"], general
    assert sorted(l for l in prints if l.startswith("** Dangerous")) == [f"** Dangerous {i}" for i in range(3)]
    assert "** Heavy 1" in heavy and "** Heavy" not in general

import os
import sys

import pytest

import baton

HERE = os.path.dirname(os.path.abspath(__file__))
# sample_tasks.py is a plain module beside the tests.
sys.path.insert(0, HERE)


@pytest.fixture
def baton_env():
    """Environment for a child Python that imports the same `baton` as this one
    (installed or from the source tree) and the modules beside the tests."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(baton.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, HERE, env.get("PYTHONPATH", "")])
    return env

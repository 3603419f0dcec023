"""Build hook: generate the gRPC stubs from ``proto/`` before packaging.

Everything static lives in ``pyproject.toml``. This file exists for two things
setuptools cannot express declaratively:

* ``tools/generate_protos.py`` runs whenever setuptools loads this file, so
  ``baton/_pb`` is produced from the proto by every build (regular install,
  editable install, wheel) and is never committed;
* the runtime dependencies are pinned to at least the grpcio and protobuf
  versions the generated code was made for (the generated modules refuse to
  import on older runtimes), which only the build knows.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "_baton_generate_protos", HERE / "tools" / "generate_protos.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Before setup(): the packages list names baton._pb, and the versions feed install_requires.
_versions: dict = _generator().generate()


class Sdist(sdist):
    """Ship a copy of ``proto/`` in the sdist so it can be built elsewhere."""

    def make_release_tree(self, base_dir: str, files: Any) -> None:
        super().make_release_tree(base_dir, files)
        _generator().copy_proto_into(Path(base_dir))


setup(
    install_requires=[
        f"grpcio>={_versions.get('grpcio', '1.62.0')}",
        f"protobuf>={_versions.get('protobuf', '4.25.0')}",
    ],
    cmdclass={"sdist": Sdist},
)

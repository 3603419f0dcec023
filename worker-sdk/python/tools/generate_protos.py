"""Generate the gRPC stubs of ``baton.v1`` into ``baton/_pb/``.

One reproducible step, used two ways:

* by ``setup.py`` (the build hook that ``pip install ./worker-sdk/python`` and
  ``pip install -e`` run), so an install needs nothing but pip;
* by hand, for working on the sources without installing::

      python -m pip install grpcio-tools
      python tools/generate_protos.py

The generated files are git-ignored: the proto under ``../../proto`` is the
only source of truth, so the Python stubs can never drift from it.

``grpc_tools.protoc`` emits ``from baton.v1 import baton_pb2`` in the service
module. That absolute import would resolve ``baton`` to *this* package (which
has no ``v1``), so the import is rewritten to a package-relative one and the
files are flattened into ``baton/_pb``. The proto keeps its canonical file name
``baton/v1/baton.proto`` inside the descriptor pool.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
PROTO_FILE = "baton/v1/baton.proto"
OUT_DIR = HERE / "baton" / "_pb"


def find_proto_root() -> Path:
    """Where ``baton/v1/baton.proto`` lives.

    ``$BATON_PROTO_DIR`` wins; then ``proto/`` beside this package (an sdist
    carries a copy there); then the repository's ``proto/`` two levels up.
    """
    candidates = []
    env = os.environ.get("BATON_PROTO_DIR")
    if env:
        candidates.append(Path(env))
    candidates += [HERE / "proto", HERE.parent.parent / "proto"]
    for root in candidates:
        if (root / PROTO_FILE).is_file():
            return root.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"{PROTO_FILE} not found (tried {tried}); set BATON_PROTO_DIR")


def generate(out_dir: Path = OUT_DIR) -> dict[str, str]:
    """Run protoc and return the runtime versions the generated code needs.

    The result maps ``"grpcio"`` and ``"protobuf"`` to the minimum versions
    named in the generated code (it refuses to import on older runtimes), so
    the build can require exactly those.
    """
    from grpc_tools import protoc  # imported here: only a build needs it

    import grpc_tools

    proto_root = find_proto_root()
    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(proto_root / PROTO_FILE),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto_root / PROTO_FILE}")
        gen = Path(tmp) / "baton" / "v1"
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in ("baton_pb2.py", "baton_pb2.pyi", "baton_pb2_grpc.py"):
            text = (gen / name).read_text(encoding="utf-8")
            text = text.replace("from baton.v1 import baton_pb2", "from . import baton_pb2")
            (out_dir / name).write_text(text, encoding="utf-8")
    (out_dir / "__init__.py").write_text(
        '"""Generated from proto/baton/v1/baton.proto by tools/generate_protos.py; do not edit."""\n',
        encoding="utf-8",
    )
    return required_versions(out_dir)


def required_versions(out_dir: Path = OUT_DIR) -> dict[str, str]:
    """Read the minimum runtime versions out of the generated files."""
    pb2 = (out_dir / "baton_pb2.py").read_text(encoding="utf-8")
    grpc_py = (out_dir / "baton_pb2_grpc.py").read_text(encoding="utf-8")
    versions = {}
    m = re.search(r"^# Protobuf Python Version: (\d+\.\d+\.\d+)", pb2, re.M)
    if m:
        versions["protobuf"] = m.group(1)
    m = re.search(r"^GRPC_GENERATED_VERSION = '([^']+)'", grpc_py, re.M)
    if m:
        versions["grpcio"] = m.group(1)
    return versions


def copy_proto_into(dest: Path) -> None:
    """Copy the proto tree under ``dest/proto`` (used when building an sdist)."""
    src = find_proto_root() / "baton"
    target = dest / "proto" / "baton"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(src, target)


if __name__ == "__main__":
    needs = generate()
    print(f"generated {OUT_DIR} (runtime needs {needs})", file=sys.stderr)

"""Regenerate ``src/tiergate/v1/`` from ``proto/tiergate/v1/admission.proto``.

One command, deterministic output: ``make proto`` runs it and ``make proto-check``
fails when the committed files differ from what the .proto says. Needs the
``dev`` extra (grpcio-tools, mypy-protobuf).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = ROOT / "src"
PACKAGE = OUT / "tiergate" / "v1"
PROTOS = ["tiergate/v1/admission.proto"]
INIT_TEXT = '"""Generated code for the tiergate.v1 gRPC contract (scripts/gen_proto.py)."""\n'


def main() -> int:
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError:
        print("gen_proto: grpcio-tools is missing; install the dev extra", file=sys.stderr)
        return 1

    # protoc finds its plugins (protoc-gen-mypy, protoc-gen-mypy_grpc) on PATH;
    # they live next to this interpreter in the virtual env.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")

    PACKAGE.mkdir(parents=True, exist_ok=True)
    for stale in PACKAGE.glob("*_pb2*"):
        stale.unlink()
    init = PACKAGE / "__init__.py"
    if not init.exists() or init.read_text() != INIT_TEXT:
        init.write_text(INIT_TEXT)

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT.relative_to(ROOT)}",
        f"-I{well_known}",
        f"--python_out={OUT.relative_to(ROOT)}",
        f"--grpc_python_out={OUT.relative_to(ROOT)}",
        f"--mypy_out={OUT.relative_to(ROOT)}",
        f"--mypy_grpc_out={OUT.relative_to(ROOT)}",
        *PROTOS,
    ]
    # Relative paths keep absolute checkout locations out of the generated code.
    os.chdir(ROOT)
    rc = protoc.main(args)
    if rc != 0:
        print(f"gen_proto: protoc failed with exit code {rc}", file=sys.stderr)
        return int(rc)
    for path in sorted(PACKAGE.glob("*_pb2*")):
        print(f"generated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

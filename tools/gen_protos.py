"""Generate the Python stubs in neostore/protocol/ from proto/*.proto.

    python tools/gen_protos.py            # (re)generate
    python tools/gen_protos.py --check    # fail if the committed stubs are stale

The stubs are committed so that installing neostore needs no protoc; CI runs
``--check`` so that they never drift from proto/.  grpcio-tools is pinned in
pyproject.toml's ``dev`` extra, so the output is reproducible.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "neostore" / "protocol"
HEADER = '"""Generated from proto/ by tools/gen_protos.py: do not edit."""\n'


def generate(out_dir: pathlib.Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.name) for p in PROTO_DIR.glob("*.proto"))
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main(
        [
            "protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *protos,
        ]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")
    # protoc writes `import common_pb2`; inside a package it must be relative.
    for path in out_dir.iterdir():
        if path.suffix not in (".py", ".pyi"):
            continue
        text = path.read_text()
        text = re.sub(r"^import (\w+_pb2) as ", r"from . import \1 as ", text, flags=re.M)
        text = re.sub(r"^import (\w+_pb2)$", r"from . import \1", text, flags=re.M)
        path.write_text(text)
    (out_dir / "__init__.py").write_text(HEADER)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if stubs are stale")
    args = parser.parse_args()
    if not args.check:
        OUT_DIR.mkdir(exist_ok=True)
        for old in OUT_DIR.glob("*_pb2*.py*"):
            old.unlink()
        generate(OUT_DIR)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = pathlib.Path(tmp)
        generate(fresh)
        stale = []
        names = {p.name for p in fresh.iterdir()} | {
            p.name for p in OUT_DIR.iterdir() if p.suffix in (".py", ".pyi")
        }
        for name in sorted(names):
            a, b = fresh / name, OUT_DIR / name
            if not a.exists() or not b.exists() or a.read_text() != b.read_text():
                stale.append(name)
        if stale:
            print("stale protocol stubs (run `make protos`):", ", ".join(stale), file=sys.stderr)
            return 1
    print("protocol stubs are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())

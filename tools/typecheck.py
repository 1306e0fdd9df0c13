"""Type-check neostore with mypy, as its modules are named when installed.

    python tools/typecheck.py [mypy options]

The source tree keeps ``master_node/``, ``storage_node/`` and ``client/``
at the top (the project's layout), while setuptools installs them as
``neostore.master_node``, ``neostore.storage_node`` and ``neostore.client``
(``package-dir`` in pyproject.toml).  mypy maps modules to directories
only, so checked from the tree it would take ``neostore.master_node.state``
for a missing module, and every name imported from it for ``Any``.  So
this builds, in a temporary directory, a ``neostore`` package of symbolic
links laid out as installed, runs ``mypy -p neostore`` there (settings:
``[tool.mypy]`` in pyproject.toml), and prints the errors with the
repository's paths.  Exit code: mypy's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _subpackages() -> dict[str, str]:
    """``neostore.X`` installed from the source directory ``D``, as X -> D
    (pyproject.toml's ``[tool.setuptools] package-dir``)."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as file:
        package_dir = tomllib.load(file)["tool"]["setuptools"]["package-dir"]
    return {name.split(".", 1)[1]: source for name, source in package_dir.items() if name.startswith("neostore.")}


def main() -> int:
    subpackages = _subpackages()
    with tempfile.TemporaryDirectory(prefix="neostore-typecheck-") as tree:
        package = os.path.join(tree, "neostore")
        os.mkdir(package)
        for name in os.listdir(os.path.join(ROOT, "neostore")):
            if name != "__pycache__":
                os.symlink(os.path.join(ROOT, "neostore", name), os.path.join(package, name))
        for installed, source in subpackages.items():
            os.symlink(os.path.join(ROOT, source), os.path.join(package, installed))
        result = subprocess.run(
            [sys.executable, "-m", "mypy", "--config-file", os.path.join(ROOT, "pyproject.toml"),
             "-p", "neostore", *sys.argv[1:]],
            cwd=tree, capture_output=True, text=True)
        output = result.stdout + result.stderr
        for installed, source in subpackages.items():
            output = output.replace(f"neostore/{installed}/", f"{source}/")
        sys.stdout.write(output)
        return result.returncode


if __name__ == "__main__":
    sys.exit(main())

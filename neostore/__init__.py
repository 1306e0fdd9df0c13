"""neostore: a replicated, partitioned, transactional storage cluster for ZODB.

This package holds what every process shares: the generated protocol stubs
(``neostore.protocol``), TIDs and OIDs (``neostore.ids``), the partition table
(``neostore.partition_table``), errors (``neostore.errors``), the one factory
for gRPC channels and servers (``neostore.rpc``), configuration and the
``neoctl`` command.  The node roles live in ``neostore.master_node``,
``neostore.storage_node`` and ``neostore.client`` (the ZODB storage).
"""

from __future__ import annotations

import argparse

__version__ = "0.1.0"


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """``--version`` for every command: neostore's version, and the versions
    of what it runs on (what an operator's bug report needs)."""
    import importlib.metadata
    import platform

    def version_of(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    parser.add_argument(
        "--version", action="version",
        version=f"%(prog)s {__version__} (Python {platform.python_version()}, grpcio {version_of('grpcio')}, "
                f"lmdb {version_of('lmdb')}, ZODB {version_of('ZODB')})")

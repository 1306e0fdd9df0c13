"""ZODB's storage conformance suite against a cluster of THREE masters (Raft).

The same :class:`NeoStorageTests` as ``test_zodb_conformance.py``, each
test on a fresh cluster whose three masters elect a leader and replicate
every state change; clients and storage nodes hold all three addresses and
follow the leader.

ZODB's race tests (``test_race_*``: 64 client threads connecting and
disconnecting) run against a cluster of processes: in one interpreter,
their threads and the six nodes fight for one GIL on a 2-core machine and
the test's own 120 s limit measures that contention, not the storage.
"""

from __future__ import annotations

import os

import test_zodb_conformance  # not its classes by name: pytest would run them here too

from harness import ProcessCluster, ThreadCluster


class RaftNeoStorageTests(test_zodb_conformance.NeoStorageTests):
    def start_cluster(self) -> None:
        if self._testMethodName.startswith("test_race"):
            self.cluster = ProcessCluster(os.path.abspath("cluster"), num_masters=3)  # type: ignore[assignment]
        else:
            self.cluster = ThreadCluster(os.path.abspath("cluster"), num_masters=3)
        self.cluster.start()

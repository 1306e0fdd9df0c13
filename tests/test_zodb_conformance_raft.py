"""ZODB's storage conformance suite against a cluster of THREE masters (Raft).

The same :class:`NeoStorageTests` as ``test_zodb_conformance.py``, each
test on a fresh cluster whose three masters elect a leader and replicate
every state change; clients and storage nodes hold all three addresses and
follow the leader.
"""

from __future__ import annotations

import os

from harness import ThreadCluster
import test_zodb_conformance  # not its classes by name: pytest would run them here too


class RaftNeoStorageTests(test_zodb_conformance.NeoStorageTests):
    def start_cluster(self) -> None:
        self.cluster = ThreadCluster(os.path.abspath("cluster"), num_masters=3)
        self.cluster.start()

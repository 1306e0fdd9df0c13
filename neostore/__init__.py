"""neostore: a replicated, partitioned, transactional storage cluster for ZODB.

This package holds what every process shares: the generated protocol stubs
(``neostore.protocol``), TIDs and OIDs (``neostore.ids``), the partition table
(``neostore.partition_table``), errors (``neostore.errors``), the one factory
for gRPC channels and servers (``neostore.rpc``), configuration and the
``neoctl`` command.  The node roles live in ``neostore.master_node``,
``neostore.storage_node`` and ``neostore.client`` (the ZODB storage).
"""

__version__ = "0.1.0"

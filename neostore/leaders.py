"""Who leads the masters, as seen from outside them (clients, storage nodes).

A master that hangs (paused, swapping, cut off) keeps its connections open
and answers nothing; one that is merely busy answers late.  Both are
silent for a while, so silence alone never makes a client or a storage
node leave a master: it leaves only when the silent master does not answer
a probe at all *and* another master names a different leader.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from neostore import errors, rpc
from neostore.protocol import common_pb2, master_pb2_grpc

StubFor = Callable[[str], master_pb2_grpc.MasterStub]


def leader_elsewhere(stub_for: StubFor, masters: Sequence[str], address: str, timeout: float) -> str | None:
    """A leader other than ``address`` named by another of ``masters``, if any."""
    for other in masters:
        if other == address:
            continue
        try:
            info = rpc.call(stub_for(other).GetClusterInfo, common_pb2.Empty(), timeout=timeout,
                            peer=f"master {other}")
        except errors.NeoError:
            continue
        if info.leader and info.leader != address:
            return str(info.leader)
    return None


def replaced_leader(stub_for: StubFor, masters: Sequence[str], address: str, probe_timeout: float,
                    timeout: float) -> str | None:
    """The master leading instead of ``address`` when ``address`` does not
    answer a probe at all; None when it answers (a busy master is slow,
    not gone) or no other master names another leader."""
    try:
        rpc.call(stub_for(address).GetClusterInfo, common_pb2.Empty(), timeout=probe_timeout,
                 peer=f"master {address}")
        return None
    except errors.NeoError:
        pass
    return leader_elsewhere(stub_for, masters, address, timeout)

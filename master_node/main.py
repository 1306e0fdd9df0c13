"""``neo-master``: run one master node as a process.

    neo-master --cluster NAME --data DIR [--bind 127.0.0.1:PORT]
               [--partitions 12] [--replicas 2] [--autostart N] [--log-level INFO]
               [--masters HOST:PORT,HOST:PORT,... --node-id N]
               [--join --masters HOST:PORT,... --bind HOST:PORT]
               [--ca FILE --cert FILE --key FILE] [--metrics HOST:PORT] [--frames-port PORT]
               [--config FILE] [--log-file PATH] [--log-format text|json]

Every option can come from ``--config FILE`` (TOML, one key per option:
:mod:`neostore.node_options`), the command line winning.

With ``--masters`` (every master's address, the same list in the same order
on each master) and ``--node-id`` (this master's position in it, from 1),
the masters agree through Raft; ``--bind`` then defaults to this master's
address in the list.

With ``--join``, the master joins a running group instead: ``--masters``
names some of its masters, ``--bind`` is this master's own host:port, and
the data directory is empty (or one it joined with before).  It waits
until ``neoctl add-master HOST:PORT`` added it, then the leader sends it
the state.  A master removed with ``neoctl remove-master`` logs it and
exits with status 0.

Prints ``neo-master ready address=HOST:PORT`` on stdout (flushed) once it
serves, so that launchers and tests can wait for that line.  SIGTERM and
SIGINT stop it cleanly (exit status 0).  A fatal error prints one line,
``neo-master: error: ...``, on stderr and exits with status 1.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

import lmdb

from neostore import add_version_argument, errors
from neostore.master_node.node import MasterConfig, MasterNode
from neostore.metrics import split_address
from neostore.node_options import add_common_arguments, exit_if_stop_hangs, parse_arguments, setup_logging
from neostore.rpc import RpcConfig, add_tls_arguments, tls_from_arguments


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="neo-master", description="Run a neostore master node.")
    add_version_argument(parser)
    parser.add_argument("--cluster", help="cluster name (every node checks it; required)")
    parser.add_argument("--data", help="data directory (command log; required)")
    parser.add_argument("--bind", default="127.0.0.1:0", help="host:port to serve on (port 0: any)")
    parser.add_argument("--partitions", type=int, default=12, help="partitions, when creating the cluster")
    parser.add_argument("--replicas", type=int, default=2, help="replicas per partition, when creating the cluster")
    parser.add_argument("--autostart", type=int, default=1,
                        help="storage nodes to wait for before creating the partition table (0: admin only)")
    parser.add_argument("--masters", default="",
                        help="every master's host:port, comma-separated (Raft between them)")
    parser.add_argument("--node-id", type=int, default=0,
                        help="this master's position in --masters, from 1")
    parser.add_argument("--join", action="store_true",
                        help="join the running masters named by --masters as the master at --bind "
                             "(after `neoctl add-master`)")
    parser.add_argument("--metrics", default="", metavar="HOST:PORT",
                        help="serve Prometheus metrics on HOST:PORT (port 0: any; off unless given)")
    parser.add_argument("--frames-port", type=int, default=0, metavar="PORT",
                        help="port (on the --bind host) of the framed calls clients make to begin and finish "
                             "transactions, a fifth of a gRPC call's cost (0: any free port; -1: none, gRPC only)")
    add_common_arguments(parser)
    add_tls_arguments(parser)
    return parse_arguments(parser, argv, required=("cluster", "data"))


def master_config(args: argparse.Namespace) -> MasterConfig:
    """The node's configuration from its parsed options (a ValueError naming a wrong one)."""
    masters = tuple(address.strip() for address in args.masters.split(",") if address.strip())
    if args.join and not masters:
        raise ValueError("--join needs --masters: the address of at least one running master")
    if args.join and args.bind.rsplit(":", 1)[-1] in ("", "0"):
        raise ValueError("--join needs --bind HOST:PORT: this master's own address, as given to add-master")
    if not args.join and len(masters) > 1 and not 1 <= args.node_id <= len(masters):
        raise ValueError(f"--node-id must be between 1 and {len(masters)} with {len(masters)} --masters")
    if args.metrics:
        split_address(args.metrics)  # a ValueError naming it, before anything starts
    if not -1 <= args.frames_port <= 65535:
        raise ValueError(f"--frames-port {args.frames_port} is not a port (0: any, -1: none)")
    return MasterConfig(
        rpc=RpcConfig(cluster_name=args.cluster, tls=tls_from_arguments(args)),
        data_dir=args.data,
        bind=args.bind,
        num_partitions=args.partitions,
        num_replicas=args.replicas,
        autostart=args.autostart,
        masters=masters if len(masters) > 1 or args.join else (),
        node_id=args.node_id if len(masters) > 1 and not args.join else 0,
        join=args.join,
        metrics=args.metrics,
        frames_port=args.frames_port,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args)
    stop_requested = threading.Event()
    starting: list[MasterNode] = []  # the node being started (a join may wait long)

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()
        for waiting in starting:  # interrupts a join still waiting to be added
            threading.Thread(target=waiting.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        node = MasterNode(master_config(args))
        starting.append(node)
        node.start()
        starting.clear()
    except (errors.NeoError, OSError, ValueError, RuntimeError, lmdb.Error) as error:
        print(f"neo-master: error: {error}", file=sys.stderr, flush=True)
        return 1
    metrics = f" metrics={node.metrics_address}" if node.metrics_address else ""
    print(f"neo-master ready address={node.address}{metrics}", flush=True)
    try:
        while not stop_requested.wait(0.1):  # a removed master stops soon: its clients move on
            if node.removed:
                print(f"neo-master: {node.address} was removed from the masters: stopping",
                      file=sys.stderr, flush=True)
                break
    finally:
        exit_if_stop_hangs()
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

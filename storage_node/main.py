"""``neo-storage``: run one storage node as a process.

    neo-storage --cluster NAME --masters HOST:PORT[,HOST:PORT...] --data DIR
                [--bind 127.0.0.1:PORT] [--advertise HOST] [--label L]
                [--map-size BYTES] [--register-timeout SECONDS] [--log-level INFO]
                [--ca FILE --cert FILE --key FILE] [--metrics HOST:PORT] [--frames-port PORT]
                [--config FILE] [--log-file PATH] [--log-format text|json]

Every option can come from ``--config FILE`` (TOML, one key per option:
:mod:`neostore.node_options`), the command line winning.  Logs go to
stderr, or ``--log-file``.  Once the node is registered and serving, one line goes
to stdout (flushed), for launchers and tests to wait on::

    neo-storage ready node_id=N address=HOST:PORT

SIGTERM or SIGINT stop it cleanly (exit status 0).  A fatal error (data
directory of another cluster, no master reachable, port taken...) ends it
with one line on stderr and a non-zero status.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from neostore import add_version_argument, errors, rpc
from neostore.metrics import split_address
from neostore.node_options import add_common_arguments, exit_if_stop_hangs, parse_arguments, setup_logging
from neostore.storage_node.database import DEFAULT_MAP_SIZE
from neostore.storage_node.node import StorageConfig, StorageNode

log = logging.getLogger("neostore.storage_node")

EXIT_FATAL = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neo-storage", description="Run a neostore storage node.")
    add_version_argument(parser)
    parser.add_argument("--cluster", help="cluster name (required)")
    parser.add_argument("--masters", help="master addresses, HOST:PORT[,HOST:PORT...] (required)")
    parser.add_argument("--data", help="data directory (one LMDB environment; required)")
    parser.add_argument("--bind", default="127.0.0.1:0", help="listen address (default %(default)s)")
    parser.add_argument("--advertise", default="", help="host (or host:port) peers reach this node at")
    parser.add_argument("--label", default="", help="failure domain label (host, rack)")
    parser.add_argument("--map-size", type=int, default=DEFAULT_MAP_SIZE,
                        help="LMDB map size in bytes (default %(default)s)")
    parser.add_argument("--register-timeout", type=float, default=60.0,
                        help="seconds to keep trying the masters at start (default %(default)s)")
    parser.add_argument("--metrics", default="", metavar="HOST:PORT",
                        help="serve Prometheus metrics on HOST:PORT (port 0: any; off unless given)")
    parser.add_argument("--frames-port", type=int, default=0, metavar="PORT",
                        help="port (on the --bind host) of the framed calls clients make for loads and "
                             "votes, a fifth of a gRPC call's cost (0: any free port; -1: none, gRPC only)")
    add_common_arguments(parser)
    rpc.add_tls_arguments(parser)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return parse_arguments(_parser(), argv, required=("cluster", "masters", "data"))


def storage_config(arguments: argparse.Namespace) -> StorageConfig:
    tls = rpc.tls_from_arguments(arguments)
    masters = [address.strip() for address in arguments.masters.split(",") if address.strip()]
    if not masters:
        raise ValueError("--masters names no address")
    if arguments.metrics:
        split_address(arguments.metrics)  # a ValueError naming it, before anything starts
    if not -1 <= arguments.frames_port <= 65535:
        raise ValueError(f"--frames-port {arguments.frames_port} is not a port (0: any, -1: none)")
    return StorageConfig(
        rpc=rpc.RpcConfig(cluster_name=arguments.cluster, tls=tls),
        masters=masters,
        data_dir=arguments.data,
        bind=arguments.bind,
        advertise=arguments.advertise,
        label=arguments.label,
        map_size=arguments.map_size,
        register_timeout=arguments.register_timeout,
        metrics=arguments.metrics,
        frames_port=arguments.frames_port,
    )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_args(argv)
    setup_logging(arguments)
    try:
        config = storage_config(arguments)
    except ValueError as error:
        print(f"neo-storage: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    node = StorageNode(config)
    stop_requested = threading.Event()

    def request_stop(signal_number: int, frame: FrameType | None) -> None:
        stop_requested.set()
        node.interrupt()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        node.start()
    except (errors.NeoError, OSError) as error:
        if stop_requested.is_set():
            return 0
        print(f"neo-storage: error: {error}", file=sys.stderr)
        return EXIT_FATAL
    metrics = f" metrics={node.metrics_address}" if node.metrics_address else ""
    print(f"neo-storage ready node_id={node.node_id} address={node.address}{metrics}", flush=True)
    while not stop_requested.wait(0.5):
        failure = node.failure
        if failure is not None:
            exit_if_stop_hangs()
            node.stop()
            print(f"neo-storage: error: {failure}", file=sys.stderr)
            return EXIT_FATAL
        if node.shutdown_reason:
            log.warning("stopping storage node %d: %s", node.node_id, node.shutdown_reason)
            exit_if_stop_hangs()
            node.stop()
            print(f"neo-storage: {node.shutdown_reason}", file=sys.stderr)
            return 0
    log.info("stopping storage node %d", node.node_id)
    exit_if_stop_hangs()
    node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``neoctl``: the administration command line of a neostore cluster.

    neoctl --masters 127.0.0.1:5551 --cluster neostore print cluster
    neoctl ... print pt --json
    neoctl ... add-node [NODE_ID...]

It talks to the masters' ``Admin`` service, trying every master given.
Exit codes: 0 success, 1 the request was refused or failed, 2 bad usage,
3 no master reachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from neostore import errors, rpc
from neostore.ids import tid_repr
from neostore.partition_table import CellState, NodeState, PartitionTable, format_table
from neostore.protocol import common_pb2, master_pb2, master_pb2_grpc

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class Admin:
    """Admin calls, tried on each master in turn."""

    def __init__(self, masters: list[str], cluster: str, tls: rpc.TlsConfig | None = None,
                 timeout: float = 10.0) -> None:
        self._masters = masters
        self._config = rpc.RpcConfig(cluster_name=cluster, tls=tls)
        self._timeout = timeout

    def call(self, method: str, request: Any) -> Any:
        failures = []
        for address in self._masters:
            channel = rpc.make_channel(self._config, address)
            try:
                stub = master_pb2_grpc.AdminStub(channel)
                return rpc.call(getattr(stub, method), request, timeout=self._timeout,
                                peer=f"master {address}")
            except (errors.Unavailable, errors.NotLeader) as error:
                failures.append(f"{address}: {error}")
            finally:
                channel.close()
        raise errors.Unavailable("no master reachable; tried " + "; ".join(failures))


def _cluster_dict(info: master_pb2.ClusterInfo) -> dict[str, Any]:
    return {
        "cluster_name": info.cluster_name,
        "state": master_pb2.ClusterInfo.State.Name(info.state),
        "num_partitions": info.num_partitions,
        "num_replicas": info.num_replicas,
        "table_version": info.table_version,
        "last_oid": tid_repr(info.last_oid),
        "last_tid": tid_repr(info.last_tid),
        "masters": list(info.masters),
        "leader": info.leader,
        "term": info.term,
    }


def _nodes(table: PartitionTable) -> list[dict[str, Any]]:
    return [{
        "node_id": node.node_id,
        "address": node.address,
        "state": NodeState(node.state).name,
        "label": node.label,
        "cells": len(table.partitions_of_node(node.node_id, list(CellState))),
    } for node in table.nodes]


def _table_dict(table: PartitionTable) -> dict[str, Any]:
    return {
        "version": table.version,
        "num_partitions": table.num_partitions,
        "num_replicas": table.num_replicas,
        "rows": [[{"node_id": c.node_id, "state": c.state.name} for c in row] for row in table.rows],
        "nodes": _nodes(table),
    }


def _print_rows(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = [max(len(col), *(len(str(r[col])) for r in rows)) if rows else len(col) for col in columns]
    print("  ".join(col.upper().ljust(w) for col, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(str(row[col]).ljust(w) for col, w in zip(columns, widths)))


def command_print(admin: Admin, args: argparse.Namespace) -> int:
    if args.what in ("cluster", "ids"):
        info = _cluster_dict(admin.call("GetClusterInfo", common_pb2.Empty()))
        if args.what == "ids":
            info = {k: info[k] for k in ("last_oid", "last_tid", "table_version")}
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            for key, value in info.items():
                print(f"{key:15} {', '.join(value) if isinstance(value, list) else value}")
        return EXIT_OK
    table = PartitionTable.from_proto(admin.call("GetPartitionTable", common_pb2.Empty()))
    if args.what == "node":
        nodes = _nodes(table)
        if args.json:
            print(json.dumps(nodes, indent=2))
        else:
            _print_rows(nodes, ["node_id", "address", "state", "label", "cells"])
        return EXIT_OK
    if args.json:
        print(json.dumps(_table_dict(table), indent=2))
    else:
        print(format_table(table))
    return EXIT_OK


def command_add_node(admin: Admin, args: argparse.Namespace) -> int:
    table = PartitionTable.from_proto(
        admin.call("AddNodes", master_pb2.AddNodesRequest(node_ids=args.node_ids)))
    if args.json:
        print(json.dumps(_table_dict(table), indent=2))
    else:
        print(format_table(table))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neoctl", description="Administer a neostore cluster.",
        epilog="Exit codes: 0 success, 1 refused or failed, 2 bad usage, 3 no master reachable.")
    parser.add_argument("--masters", default=os.environ.get("NEOSTORE_MASTERS", "127.0.0.1:5551"),
                        help="master addresses, comma separated (default: $NEOSTORE_MASTERS or %(default)s)")
    parser.add_argument("--cluster", default=os.environ.get("NEOSTORE_CLUSTER", "neostore"),
                        help="cluster name (default: $NEOSTORE_CLUSTER or %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    rpc.add_tls_arguments(parser, "neoctl")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    show = commands.add_parser("print", help="print cluster, node, pt (partition table) or ids")
    show.add_argument("what", choices=["cluster", "node", "pt", "ids"])
    show.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    show.set_defaults(run=command_print)
    add = commands.add_parser("add-node", help="admit PENDING storage nodes (all when none given)")
    add.add_argument("node_ids", nargs="*", type=int, metavar="NODE_ID")
    add.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    add.set_defaults(run=command_add_node)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    masters = [m for m in args.masters.replace(",", " ").split() if m]
    try:
        tls = rpc.tls_from_arguments(args)
    except ValueError as error:
        parser.error(str(error))
    admin = Admin(masters, args.cluster, tls)
    try:
        return args.run(admin, args)
    except errors.Unavailable as error:
        print(f"neoctl: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except errors.NeoError as error:
        print(f"neoctl: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())

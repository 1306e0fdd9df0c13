"""``neoctl``: the administration command line of a neostore cluster.

    neoctl --masters 127.0.0.1:5551 --cluster neostore print cluster
    neoctl ... print pt --json
    neoctl ... add-node [NODE_ID...]
    neoctl ... add-master HOST:PORT      (then: neo-master --join ... --bind HOST:PORT)
    neoctl ... remove-master HOST:PORT
    neoctl ... start                    (a cluster created with --autostart 0)
    neoctl ... drop-node NODE_ID [--force]
    neoctl ... tweak [--dry-run]
    neoctl ... set replicas N
    neoctl ... set cluster RUNNING|STOPPING
    neoctl ... kill NODE_ID [--force]   (take a storage node down for maintenance)
    neoctl ... truncate TID [--yes]     (roll the database back to TID)
    neoctl ... check [--repair] [PARTITION...]  (compare replicas; exit 4 if they differ)
    neoctl ... status                   (data movement in progress)
    neoctl ... wait [--timeout S]       (until every cell is UP_TO_DATE)
    neoctl ... import SOURCE-CONFIG [--incremental] [--verify]  (bring a ZODB database in)

It talks to the masters' ``Admin`` service, trying every master given and
following a follower's ``NotLeader`` hint to the leader (which may be a
master the command line did not name); while the masters elect a leader it
retries for a few seconds.
Exit codes: 0 success, 1 the request was refused or failed, 2 bad usage,
3 no master reachable, 4 ``check`` found replicas that differ (or ``import
--verify`` a difference), 5 ``wait`` timed out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import time
from typing import Any, cast

from neostore import add_version_argument, errors, rpc
from neostore.ids import p64, tid_repr, tid_time
from neostore.partition_table import READABLE_STATES, CellState, NodeState, PartitionTable, format_table
from neostore.protocol import common_pb2, master_pb2, master_pb2_grpc, storage_pb2, storage_pb2_grpc

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INCONSISTENT, EXIT_TIMEOUT = 0, 1, 2, 3, 4, 5
#: check: some partition had fewer than two readable replicas to compare.
EXIT_NOT_COMPARED = 6
#: health: DEGRADED, UNAVAILABLE.
EXIT_DEGRADED, EXIT_UNAVAILABLE = 7, 8
#: How long ``check`` may take per call (it reads every replica).
CHECK_TIMEOUT = 3600.0
_ADDRESS = re.compile(r"[\w.\-\[\]:]+:\d+")
#: How long a call retries while masters answer NotLeader (an election).
LEADER_WAIT_SECONDS = 10.0


class Admin:
    """Admin calls, tried on each master in turn."""

    def __init__(self, masters: list[str], cluster: str, tls: rpc.TlsConfig | None = None,
                 timeout: float = 10.0) -> None:
        self._masters = masters
        self._config = rpc.RpcConfig(cluster_name=cluster, tls=tls)
        self._timeout = timeout
        self.masters, self.cluster, self.tls = masters, cluster, tls  # for commands that open a client

    def _ask(self, address: str, stub_class: Any, method: str, request: Any, peer: str) -> Any:
        """One call to the node at ``address`` itself (no leader following);
        None if it does not answer."""
        channel = rpc.make_channel(self._config, address)
        try:
            return rpc.call(getattr(stub_class(channel), method), request, timeout=self._timeout, peer=peer)
        except errors.NeoError:
            return None
        finally:
            channel.close()

    def master_info(self, address: str) -> master_pb2.ClusterInfo | None:
        """What the master at ``address`` itself says, None if it does not answer."""
        return self._ask(address, master_pb2_grpc.AdminStub, "GetClusterInfo", common_pb2.Empty(),
                         f"master {address}")

    def storage_stats(self, address: str) -> storage_pb2.StatsReply | None:
        """What a storage node holds (its readable cells), None if it does not answer."""
        return self._ask(address, storage_pb2_grpc.StorageStub, "GetStats", storage_pb2.StatsRequest(),
                         f"storage node at {address}")

    def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        deadline = time.monotonic() + LEADER_WAIT_SECONDS
        while True:
            failures: list[str] = []
            saw_not_leader = False
            masters = list(self._masters)
            for address in masters:  # grows with the leaders that NotLeader names
                channel = rpc.make_channel(self._config, address)
                try:
                    stub = master_pb2_grpc.AdminStub(channel)
                    return rpc.call(getattr(stub, method), request, timeout=timeout or self._timeout,
                                    peer=f"master {address}")
                except errors.NotLeader as error:
                    saw_not_leader = True
                    failures.append(f"{address}: {error}")
                    for hint in _ADDRESS.findall(str(error)):
                        if hint not in masters:
                            masters.append(hint)
                except errors.Unavailable as error:
                    failures.append(f"{address}: {error}")
                finally:
                    channel.close()
            if not saw_not_leader or time.monotonic() > deadline:
                raise errors.Unavailable("no master reachable; tried " + "; ".join(failures))
            time.sleep(0.3)  # masters answer, but none leads yet: an election


def _cluster_dict(info: master_pb2.ClusterInfo) -> dict[str, Any]:
    return {
        "cluster_name": info.cluster_name,
        "cluster_id": info.cluster_id or None,  # None: a cluster created before ids existed
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
    print("  ".join(col.upper().ljust(w) for col, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row[col]).ljust(w) for col, w in zip(columns, widths, strict=True)))


def command_print(admin: Admin, args: argparse.Namespace) -> int:
    if args.what in ("cluster", "ids"):
        info = _cluster_dict(admin.call("GetClusterInfo", common_pb2.Empty()))
        if args.what == "ids":
            info = {k: info[k] for k in ("last_oid", "last_tid", "table_version")}
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            for key, value in info.items():
                shown = ", ".join(value) if isinstance(value, list) else "-" if value is None else value
                print(f"{key:15} {shown}")
        return EXIT_OK
    table = PartitionTable.from_proto(admin.call("GetPartitionTable", common_pb2.Empty()))
    if args.what == "node":
        nodes = _nodes(table)
        for node in nodes:
            stats = admin.storage_stats(node["address"]) if node["state"] == "RUNNING" else None
            node["objects"] = stats.object_count if stats is not None else None
            node["size_bytes"] = stats.size if stats is not None else None
        if args.json:
            print(json.dumps(nodes, indent=2))
        else:
            for node in nodes:
                node["objects"] = "-" if node["objects"] is None else node["objects"]
                node["size"] = "-" if node["size_bytes"] is None else _human_size(node["size_bytes"])
            _print_rows(nodes, ["node_id", "address", "state", "label", "cells", "objects", "size"])
        return EXIT_OK
    if args.json:
        print(json.dumps(_table_dict(table), indent=2))
    else:
        print(format_table(table))
    return EXIT_OK


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _print_tweak(reply: master_pb2.TweakReply, args: argparse.Namespace, what: str) -> None:
    table = PartitionTable.from_proto(reply.table)
    if args.json:
        print(json.dumps({**_table_dict(table), "moves": list(reply.moves)}, indent=2))
        return
    print(format_table(table))
    if reply.moves:
        print(f"{what}:")
        for line in reply.moves:
            print(f"  {line}")
    else:
        print("the table is balanced: no cell moves")


def command_add_node(admin: Admin, args: argparse.Namespace) -> int:
    table = PartitionTable.from_proto(
        admin.call("AddNodes", master_pb2.AddNodesRequest(node_ids=args.node_ids)))
    if args.no_rebalance or not table.created:
        if args.json:
            print(json.dumps(_table_dict(table), indent=2))
        else:
            print(format_table(table))
        return EXIT_OK
    _print_tweak(admin.call("Tweak", master_pb2.TweakRequest()), args, "moving (see neoctl status)")
    return EXIT_OK


def command_start(admin: Admin, args: argparse.Namespace) -> int:
    info = admin.call("GetClusterInfo", common_pb2.Empty())
    if info.state in (master_pb2.ClusterInfo.RUNNING, master_pb2.ClusterInfo.STOPPING):
        if not args.json:
            print(f"cluster {info.cluster_name!r} is already running")
            return EXIT_OK
        table = PartitionTable.from_proto(admin.call("GetPartitionTable", common_pb2.Empty()))
        print(json.dumps(_table_dict(table), indent=2))  # the table it runs with, as a start prints it
        return EXIT_OK
    table = PartitionTable.from_proto(admin.call("AddNodes", master_pb2.AddNodesRequest()))
    if args.json:
        print(json.dumps(_table_dict(table), indent=2))
    else:
        print(format_table(table))
    return EXIT_OK


def command_drop_node(admin: Admin, args: argparse.Namespace) -> int:
    reply = admin.call("Tweak", master_pb2.TweakRequest(drop=[args.node_id], force=args.force))
    _print_tweak(reply, args, f"moving every cell away from node {args.node_id}, which then leaves the cluster")
    return EXIT_OK


def command_tweak(admin: Admin, args: argparse.Namespace) -> int:
    reply = admin.call("Tweak", master_pb2.TweakRequest(dry_run=args.dry_run))
    _print_tweak(reply, args, "would move (dry run)" if args.dry_run else "moving (see neoctl status)")
    return EXIT_OK


def command_set_cluster(admin: Admin, args: argparse.Namespace) -> int:
    state = cast("master_pb2.ClusterInfo.State", master_pb2.ClusterInfo.State.Value(args.state))
    info = _cluster_dict(admin.call("SetClusterState", master_pb2.SetClusterStateRequest(state=state)))
    if args.json:
        print(json.dumps(info, indent=2))
    elif args.state == "STOPPING":
        print(f"cluster {info['cluster_name']!r} is STOPPING: new transactions are refused, "
              "reads go on (neoctl set cluster RUNNING to resume)")
    else:
        print(f"cluster {info['cluster_name']!r} is RUNNING")
    return EXIT_OK


def command_kill(admin: Admin, args: argparse.Namespace) -> int:
    table = PartitionTable.from_proto(
        admin.call("KillNode", master_pb2.KillNodeRequest(node_id=args.node_id, force=args.force), timeout=60))
    if args.json:
        print(json.dumps(_table_dict(table), indent=2))
        return EXIT_OK
    print(format_table(table))
    print(f"storage node {args.node_id} was told to stop and is marked DOWN; "
          "restart it to rejoin: its cells catch up by replication")
    return EXIT_OK


def _parse_tid(text: str) -> bytes:
    digits = text[2:] if text.lower().startswith("0x") else text
    try:
        value = int(digits, 16)
    except ValueError:
        raise ValueError(f"not a TID: {text!r} (16 hex digits, as neoctl print ids shows)") from None
    if not 0 <= value < 2**64:
        raise ValueError(f"not a TID: {text!r} (more than 8 bytes)")
    return p64(value)


def _tid_label(tid: bytes) -> str:
    when = datetime.datetime.fromtimestamp(tid_time(tid), datetime.UTC)
    return f"{tid_repr(tid)} ({when:%Y-%m-%d %H:%M:%S} UTC)"


def command_truncate(admin: Admin, args: argparse.Namespace) -> int:
    try:
        tid = _parse_tid(args.tid)
    except ValueError as error:
        print(f"neoctl: {error}", file=sys.stderr)
        return EXIT_USAGE
    info = admin.call("GetClusterInfo", common_pb2.Empty())
    if tid >= info.last_tid:
        print(f"neoctl: nothing to truncate: the last TID is {_tid_label(info.last_tid)}", file=sys.stderr)
        return EXIT_REFUSED
    if not args.yes:
        if not sys.stdin.isatty():
            print("neoctl: truncate deletes data: confirm with --yes when not on a terminal", file=sys.stderr)
            return EXIT_USAGE
        print(f"This deletes, on every storage node of cluster {info.cluster_name!r}, every transaction "
              f"committed after {_tid_label(tid)} (the last one is {_tid_label(info.last_tid)}).  "
              "It cannot be undone.")
        answer = input(f"Type the cluster name ({info.cluster_name}) to go on: ")
        if answer.strip() != info.cluster_name:
            print("neoctl: not confirmed: nothing was changed", file=sys.stderr)
            return EXIT_REFUSED
    was_running = info.state == master_pb2.ClusterInfo.RUNNING
    if was_running:
        admin.call("SetClusterState", master_pb2.SetClusterStateRequest(state=master_pb2.ClusterInfo.STOPPING))
        if not args.json:
            print("cluster STOPPING: no new transaction while truncating")
    try:
        reply = admin.call("Truncate", master_pb2.TruncateRequest(tid=tid), timeout=120)
    finally:
        if was_running:
            admin.call("SetClusterState", master_pb2.SetClusterStateRequest(state=master_pb2.ClusterInfo.RUNNING))
    result = {
        "truncated_after": tid_repr(reply.truncation.after),
        "new_last_tid": tid_repr(reply.truncation.upto),
        "nodes_done": list(reply.truncated),
        "nodes_later": list(reply.later),
        "transactions_deleted": reply.transactions_deleted,
        "revisions_deleted": reply.revisions_deleted,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    print(f"truncated after {_tid_label(tid)}: {reply.transactions_deleted} transaction records and "
          f"{reply.revisions_deleted} object revisions deleted (all replicas) on storage node(s) "
          f"{', '.join(map(str, reply.truncated)) or 'none'}")
    if reply.later:
        print(f"storage node(s) {', '.join(map(str, reply.later))} not running now (down or pending): "
              "they truncate when they register again")
    print(f"the last TID is now {tid_repr(reply.truncation.upto)} (TIDs never go back); clients reset their caches"
          + ("; cluster RUNNING again" if was_running else ""))
    return EXIT_OK


def command_set(admin: Admin, args: argparse.Namespace) -> int:
    if args.replicas < 1:
        print("neoctl: the replica count must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    reply = admin.call("Tweak", master_pb2.TweakRequest(replicas=args.replicas, force=args.force))
    _print_tweak(reply, args, f"{args.replicas} replicas per partition")
    return EXIT_OK


def _members(reply: Any) -> list[dict[str, Any]]:
    return [{"node_id": member.node_id, "address": member.address} for member in reply.members]


def command_membership(admin: Admin, args: argparse.Namespace) -> int:
    adding = args.command == "add-master"
    reply = admin.call("AddMaster" if adding else "RemoveMaster", master_pb2.MasterAddress(address=args.address))
    members = _members(reply)
    if args.json:
        print(json.dumps({"node_id": reply.node_id, "address": args.address,
                          "added" if adding else "removed": True, "members": members}, indent=2))
        return EXIT_OK
    if adding:
        print(f"master {args.address} added as node {reply.node_id}; start it with:")
        others = ",".join(m["address"] for m in members if m["address"] != args.address)
        print(f"  neo-master --cluster {args.cluster} --join --masters {others} --bind {args.address} --data DIR")
    else:
        print(f"master {args.address} (node {reply.node_id}) removed")
    _print_rows(members, ["node_id", "address"])
    return EXIT_OK


def command_check(admin: Admin, args: argparse.Namespace) -> int:
    reply = admin.call("Check", master_pb2.CheckRequest(partitions=args.partitions, repair=args.repair),
                       timeout=CHECK_TIMEOUT)
    rows = [{
        "partition": p.partition,
        "replicas": list(p.node_ids),
        "records": p.records,
        "up_to_tid": tid_repr(p.max_tid),
        "result": "DIFFERS" if not p.consistent else "ok" if len(p.node_ids) >= 2 else "not compared",
        "corrupted": list(p.corrupted),
        "rebuilding": list(p.repairing),
        "detail": p.detail,
    } for p in reply.partitions]
    columns = ["partition", "replicas", "records", "up_to_tid", "result", "corrupted", "detail"]
    if args.repair:
        columns.insert(-1, "rebuilding")
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_rows([{key: (",".join(map(str, value)) or "-") if isinstance(value, list) else value
                      for key, value in row.items()} for row in rows], columns)
    differing = [row for row in rows if row["result"] == "DIFFERS"]
    alone = [row for row in rows if row["result"] == "not compared"]
    rebuilding = [row for row in rows if row["rebuilding"]]
    if not args.json:
        print(f"{len(rows) - len(differing) - len(alone)} of {len(rows)} partitions consistent"
              + (f"; {len(differing)} differ" if differing else "")
              + (f"; {len(alone)} not compared (fewer than 2 readable replicas reachable)" if alone else ""))
        if rebuilding:
            print(f"{len(rebuilding)} partition(s) rebuilding CORRUPTED cells from healthy replicas "
                  "(see neoctl status; neoctl wait)")
    return EXIT_INCONSISTENT if differing else EXIT_NOT_COMPARED if alone else EXIT_OK


def cluster_health(admin: Admin) -> tuple[str, list[str]]:
    """HEALTHY, DEGRADED or UNAVAILABLE, and every problem found.

    UNAVAILABLE: no master answers, none leads, the cluster has no
    partition table yet, or a partition has no readable replica on a
    running storage node (its objects cannot be read).  DEGRADED: it
    serves, but a master does not answer or follows another leader, a
    storage node is DOWN, a partition has fewer readable replicas than the
    cluster keeps, a cell is CORRUPTED, or the cluster is STOPPING."""
    try:
        info = admin.call("GetClusterInfo", common_pb2.Empty())
        table = PartitionTable.from_proto(admin.call("GetPartitionTable", common_pb2.Empty()))
    except errors.Unavailable as error:
        return "UNAVAILABLE", [str(error)]
    fatal: list[str] = []
    problems: list[str] = []
    if info.state == info.EMPTY:
        fatal.append("no partition table yet: waiting for storage nodes (or `neoctl start`)")
    elif info.state == info.STOPPING:
        problems.append("the cluster is STOPPING: it takes no new transaction (`neoctl set cluster RUNNING`)")
    if not info.leader:
        fatal.append("no master leads")
    for address in info.masters:
        seen = admin.master_info(address)
        if seen is None:
            problems.append(f"master {address} does not answer")
        elif seen.leader != info.leader:
            problems.append(f"master {address} follows {seen.leader or 'no leader'}, not {info.leader}")
    running = {node.node_id for node in table.nodes if node.state == NodeState.RUNNING}
    for node in table.nodes:
        if node.state == NodeState.DOWN:
            problems.append(f"storage node {node.node_id} at {node.address} is DOWN")
    short: list[int] = []
    for partition, row in enumerate(table.rows):
        readable = [cell.node_id for cell in row if cell.state in READABLE_STATES and cell.node_id in running]
        if not readable:
            fatal.append(f"partition {partition} has no readable replica on a running storage node")
        elif len(readable) < table.num_replicas:
            short.append(partition)
        problems.extend(f"partition {partition}: the cell of storage node {cell.node_id} is CORRUPTED"
                        for cell in row if cell.state == CellState.CORRUPTED)
    if short:
        problems.append(f"{len(short)} partition(s) with fewer than {table.num_replicas} readable replicas: "
                        + ", ".join(map(str, short)))
    if fatal:
        return "UNAVAILABLE", fatal + problems
    return ("DEGRADED" if problems else "HEALTHY"), problems


def command_health(admin: Admin, args: argparse.Namespace) -> int:
    verdict, problems = cluster_health(admin)
    if args.json:
        print(json.dumps({"health": verdict, "problems": problems}, indent=2))
    else:
        print(verdict)
        for problem in problems:
            print(f"  {problem}")
    return {"HEALTHY": EXIT_OK, "DEGRADED": EXIT_DEGRADED}.get(verdict, EXIT_UNAVAILABLE)


def _moving(table: PartitionTable) -> list[tuple[int, int, str]]:
    """(partition, node, state) of every cell that is not UP_TO_DATE."""
    return [(p, c.node_id, c.state.name) for p, row in enumerate(table.rows) for c in row
            if c.state != CellState.UP_TO_DATE]


def _bar(fraction: float, width: int = 24) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _status_rows(admin: Admin) -> tuple[list[dict[str, Any]], list[tuple[int, int, str]]]:
    table = PartitionTable.from_proto(admin.call("GetPartitionTable", common_pb2.Empty()))
    progress = {(c.partition, c.node_id): c for c in admin.call("GetReplication", common_pb2.Empty()).cells}
    rows = []
    for partition, node_id, state in _moving(table):
        cell = progress.get((partition, node_id))
        row: dict[str, Any] = {"partition": partition, "node_id": node_id, "state": state}
        if cell is not None:
            total = cell.bytes_done + cell.bytes_left
            row.update({
                "source": cell.source_node_id,
                "records_done": cell.records_done, "records_left": cell.records_left,
                "bytes_done": cell.bytes_done, "bytes_left": cell.bytes_left,
                "records_copied": cell.records_copied, "chunks_skipped": cell.chunks_skipped,
                "rate_bytes_per_s": round(cell.rate), "fraction": cell.bytes_done / total if total else 0.0,
                "eta_s": round(cell.bytes_left / cell.rate, 1) if cell.rate else None,
            })
        rows.append(row)
    return rows, _moving(table)


def _print_status(rows: list[dict[str, Any]], terminal: bool) -> None:
    if not rows:
        print("every cell is UP_TO_DATE: no data moving")
        return
    for row in rows:
        head = f"partition {row['partition']:>4} node {row['node_id']:>3} {row['state']:<11}"
        if "fraction" not in row:
            print(f"{head} waiting to replicate")
            continue
        eta = f"ETA {row['eta_s']:.0f}s" if row["eta_s"] is not None else "ETA -"
        figures = (f"{row['bytes_done'] / 1e6:.1f}/{(row['bytes_done'] + row['bytes_left']) / 1e6:.1f} MB, "
                   f"{row['records_done']} records done, ~{row['records_left']} left, "
                   f"{row['rate_bytes_per_s'] / 1e6:.1f} MB/s, {eta} (from node {row['source']})")
        print(f"{head} {_bar(row['fraction']) + ' ' if terminal else ''}{figures}")


def command_status(admin: Admin, args: argparse.Namespace) -> int:
    rows, _ = _status_rows(admin)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_status(rows, sys.stdout.isatty())
    return EXIT_OK


def command_wait(admin: Admin, args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    while True:
        rows, moving = _status_rows(admin)
        if not moving:
            print("[]" if args.json else "every cell is UP_TO_DATE")  # JSON: no cell left waiting
            return EXIT_OK
        if time.monotonic() > deadline:
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                _print_status(rows, False)
                print(f"neoctl: {len(moving)} cells still not UP_TO_DATE after {args.timeout:g}s", file=sys.stderr)
            return EXIT_TIMEOUT
        if not args.json and not args.quiet:
            _print_status(rows, sys.stdout.isatty())
        time.sleep(args.interval)


def command_import(admin: Admin, args: argparse.Namespace) -> int:
    from neostore import importer
    from neostore.client import NeoStorage

    source = importer.open_source(args.source)
    summary: dict[str, Any] = {}
    try:
        def new_client() -> NeoStorage:
            return NeoStorage(admin.masters, admin.cluster, tls=admin.tls)

        terminal = sys.stderr.isatty()
        quiet = args.quiet or args.json

        def report(progress: importer.Progress) -> None:
            line = importer.progress_line(progress)
            print(f"\r{line}\x1b[K" if terminal else line, end="" if terminal else "\n", file=sys.stderr, flush=True)

        if not args.verify_only:
            progress = importer.Importer(source, new_client,
                                         batch_records=args.batch_records or importer.BATCH_RECORDS,
                                         report=None if quiet else report,
                                         report_every=1.0 if terminal else 10.0).run(args.incremental)
            if terminal and not quiet:
                print(file=sys.stderr)
            summary["import"] = progress.as_dict()
            if not args.json:
                print(f"imported {importer.progress_line(progress)}" if progress.transactions
                      else "nothing to import: the cluster holds every transaction of the source")
        if args.verify or args.verify_only:
            destination = new_client()
            try:
                verification = importer.verify(source, destination)
            finally:
                destination.close()
            summary["verify"] = verification.as_dict()
            if not args.json:
                print(f"verified {verification.transactions:,} transactions and {verification.records:,} records "
                      f"in {verification.seconds:.0f}s: "
                      + (f"{len(verification.differences)} difference(s)" if verification.differences
                         else "source and cluster hold the same history"))
                for difference in verification.differences[:20]:
                    print(f"  {difference}")
    finally:
        source.close()
    if args.json:
        print(json.dumps(summary, indent=2))
    return EXIT_INCONSISTENT if summary.get("verify", {}).get("differences") else EXIT_OK


def _subcommand(commands: Any, name: str, run: Any = None, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand that calls ``run(admin, args)`` (none: it has subcommands
    of its own); each takes --json after its name as well as before it."""
    parser = commands.add_parser(name, **kwargs)
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    if run is not None:
        parser.set_defaults(run=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neoctl", description="Administer a neostore cluster.",
        epilog="Exit codes: 0 success, 1 refused or failed, 2 bad usage, 3 no master reachable, "
               "4 check found replicas that differ (import --verify: a difference), 5 wait timed out, "
               "6 check could not compare some partition (fewer than 2 readable replicas), "
               "7 health: DEGRADED, 8 health: UNAVAILABLE.")
    add_version_argument(parser)
    parser.add_argument("--masters", default=os.environ.get("NEOSTORE_MASTERS", "127.0.0.1:5551"),
                        help="master addresses, comma separated (default: $NEOSTORE_MASTERS or %(default)s)")
    parser.add_argument("--cluster", default=os.environ.get("NEOSTORE_CLUSTER", "neostore"),
                        help="cluster name (default: $NEOSTORE_CLUSTER or %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    rpc.add_tls_arguments(parser, "neoctl")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    show = _subcommand(commands, "print", command_print, help="print cluster, node, pt (partition table) or ids")
    show.add_argument("what", choices=["cluster", "node", "pt", "ids"])
    add = _subcommand(commands, "add-node", command_add_node,
        help="admit PENDING storage nodes (all when none given)")
    add.add_argument("node_ids", nargs="*", type=int, metavar="NODE_ID")
    add.add_argument("--no-rebalance", action="store_true", help="admit only: move no cell to the new nodes")
    _subcommand(commands, "start", command_start,
        help="start a cluster created empty: create its table on the registered storage nodes",
        description="For masters started with --autostart 0: once the storage nodes have registered, "
                    "create the partition table on all of them and start serving.")
    drop = _subcommand(commands, "drop-node", command_drop_node,
        help="move every cell of a storage node to the others, then remove it",
        description="The node's cells keep serving (FEEDING) until their replacements on other nodes are "
                    "UP_TO_DATE; then they are dropped, and once the node holds none it leaves the cluster "
                    "(its process stops: its data belongs to no cluster any more).  Refused when fewer "
                    "nodes than the replica count would remain, unless --force.")
    drop.add_argument("node_id", type=int, metavar="NODE_ID")
    drop.add_argument("--force", action="store_true", help="accept fewer replicas than configured")
    tweak = _subcommand(commands, "tweak", command_tweak,
        help="rebalance the partition table over the running nodes",
        description="Recompute a balanced table: cells spread evenly (within one per node), never two "
                    "replicas of a partition on one node nor, when nodes carry labels, in one label; "
                    "as few cells moved as possible.  Shows what moves.")
    tweak.add_argument("--dry-run", action="store_true", help="only show what would move")
    setting = _subcommand(commands, "set", help="change a cluster setting: set replicas N, set cluster STATE")
    setting_what = setting.add_subparsers(dest="setting", required=True, metavar="SETTING")
    replicas = _subcommand(setting_what, "replicas", command_set,
        help="the replica count R", description="New replicas are filled by replication; "
        "surplus ones are dropped once the others are up to date.")
    replicas.add_argument("replicas", type=int, metavar="N")
    replicas.add_argument("--force", action="store_true", help="accept fewer nodes than replicas")
    cluster_state = _subcommand(setting_what, "cluster", command_set_cluster,
        help="the cluster state: RUNNING or STOPPING",
        description="STOPPING: the cluster refuses new transactions (ZODB applications get ReadOnlyError "
                    "from tpc_begin), lets those in flight end, and keeps serving reads: for "
                    "maintenance.  RUNNING: serve writes again.")
    cluster_state.add_argument("state", choices=["RUNNING", "STOPPING"])
    kill = _subcommand(commands, "kill", command_kill, help="take a storage node down for maintenance",
        description="Tell the storage node to exit and mark it DOWN: its cells become OUT_OF_DATE and the "
                    "other replicas serve.  Restarted, it rejoins and catches up by replication.  Refused "
                    "when it holds the only readable replica on a running node of some partition, "
                    "unless --force.")
    kill.add_argument("node_id", type=int, metavar="NODE_ID")
    kill.add_argument("--force", action="store_true", help="even if partitions become unreadable")
    truncate = _subcommand(commands, "truncate", command_truncate,
        help="roll the database back to a TID (asks for confirmation)",
        description="Delete every transaction committed after TID, on every storage node (nodes that are "
                    "down do it when they rejoin).  The cluster is STOPPING meanwhile (new transactions "
                    "are refused; those in flight end first) and RUNNING again after, if it was.  The last "
                    "TID moves on, above every TID before: clients reset their caches and see the "
                    "database as of TID.  Asks to type the cluster name, unless --yes.")
    truncate.add_argument("tid", metavar="TID", help="keep every transaction up to this TID (hex, as print ids shows)")
    truncate.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add_master = _subcommand(commands, "add-master", command_membership,
        help="add a master to the masters' Raft group (one change at a time)",
        description="Add the master that will serve at ADDRESS; then start it with "
                    "`neo-master --join --masters EXISTING --bind ADDRESS`.  Refused (exit 1) when "
                    "ADDRESS is a member, another change is pending, or too few masters answer.")
    add_master.add_argument("address", metavar="HOST:PORT")
    remove_master = _subcommand(commands, "remove-master", command_membership,
        help="remove a master from the masters' Raft group",
        description="Remove the master at ADDRESS (it stops taking part; the leader first hands "
                    "leadership over to the most up-to-date other master, which removes it).  Refused (exit 1) "
                    "for an unknown address, the last master, a pending change, or when the remaining masters "
                    "would have no reachable majority.")
    remove_master.add_argument("address", metavar="HOST:PORT")
    check = _subcommand(commands, "check", command_check,
        help="compare the replicas of partitions by checksums (exit 4 if any differ, "
             "6 if some could not be compared)",
        description="Compare every readable replica of the partitions given (all by default) range by "
                    "range, up to a TID every replica holds, while the cluster serves.  A replica that "
                    "differs from a strict majority is marked CORRUPTED; with two replicas that differ, "
                    "the difference is reported and nothing is marked.  With --repair, every CORRUPTED "
                    "cell of those partitions is then rebuilt: its data is deleted and it copies the "
                    "partition again from a healthy replica.")
    check.add_argument("partitions", nargs="*", type=int, metavar="PARTITION")
    check.add_argument("--repair", action="store_true", help="rebuild CORRUPTED cells from healthy replicas")
    _subcommand(commands, "health", command_health,
        help="HEALTHY, DEGRADED or UNAVAILABLE, with every problem found (exit 0, 7 or 8)",
        description="Asks the leader for the cluster's state and table and every master for its own "
                    "view.  UNAVAILABLE (exit 8): no master answers, none leads, no partition table yet, "
                    "or a partition has no readable replica on a running storage node.  DEGRADED (exit 7): "
                    "it serves, but a master does not answer or follows another leader, a storage node "
                    "is DOWN, a partition has fewer readable replicas than the cluster keeps, a cell is "
                    "CORRUPTED, or the cluster is STOPPING.  HEALTHY (exit 0): none of these.")
    _subcommand(commands, "status", command_status,
        help="show data movement: each cell not UP_TO_DATE, with replication progress",
        description="One line per cell that is not UP_TO_DATE: its state and, while it replicates, "
                    "bytes and records done and left, rate and ETA (a progress bar on a terminal).")
    imports = _subcommand(commands, "import", command_import,
        help="copy an existing ZODB database (FileStorage, ZEO, RelStorage...) into the cluster",
        description="SOURCE is a ZConfig file with one storage section, as zodbconvert's source "
                    "(e.g. <filestorage> path /srv/Data.fs </filestorage>).  Every transaction is copied "
                    "with its TID, status, user, description and extension, in TID order; progress goes "
                    "to stderr.  The cluster must be empty, unless --incremental: then the copy continues "
                    "after the cluster's last TID (which must be a transaction of the source), e.g. after "
                    "an interrupted import or to catch up with a source still in use.  --verify then "
                    "compares both histories, every transaction and record (exit 4 on a difference).")
    imports.add_argument("source", metavar="SOURCE-CONFIG")
    imports.add_argument("--incremental", action="store_true", help="continue after the cluster's last TID")
    imports.add_argument("--verify", action="store_true", help="then compare every transaction and record")
    imports.add_argument("--verify-only", action="store_true", help="only compare (no copy)")
    imports.add_argument("--batch-records", type=int, metavar="N",
                         help="records of consecutive source transactions committed as one (default 2000)")
    imports.add_argument("--quiet", action="store_true", help="no progress on stderr")
    wait = _subcommand(commands, "wait", command_wait,
        help="wait until every cell is UP_TO_DATE (exit 5 on timeout)",
        description="Poll until no cell is OUT_OF_DATE, FEEDING or otherwise not UP_TO_DATE, "
                    "printing the status meanwhile (for scripts: --quiet).")
    wait.add_argument("--timeout", type=float, default=600.0, help="seconds (default %(default)s)")
    wait.add_argument("--interval", type=float, default=1.0, help="seconds between polls (default %(default)s)")
    wait.add_argument("--quiet", action="store_true", help="print nothing while waiting")
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
        code: int = args.run(admin, args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        # The reader went away (`neoctl ... | head`): nothing more to say, and
        # no traceback when Python flushes stdout on exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except errors.Unavailable as error:
        print(f"neoctl: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except errors.NeoError as error:
        print(f"neoctl: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())

"""``neoctl --json``: every command's output against its schema in docs/neoctl-json.md.

The document gives, for each command that prints JSON, a JSON Schema (a
subset of draft 2020-12) in a code block whose info string is ``json schema
COMMAND``, followed by an example in a ``json`` block.  These tests parse
those blocks and check, with the small validator below:

- the document itself: only the keywords of the subset, a description for
  every property, every example valid, one schema per command that takes
  ``--json`` (derived from neoctl's argparse parser) and none for a command
  that does not exist, the exit-code table equal to neoctl's ``EXIT_*``;
- the real output of every command, run with ``neoctl.main`` against
  clusters of this process (tests/harness.py): read-only commands on one
  cluster shared by the module, the ones that change a cluster (kill,
  drop-node, truncate, set replicas, add-master...) on clusters of their own.

Nothing here sleeps to let something happen: the tests wait for conditions
(``_wait_for``) or use ``neoctl wait``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
import ZODB
import ZODB.FileStorage
from persistent.mapping import PersistentMapping

from neostore import neoctl
from neostore.launcher import free_port
from neostore.partition_table import NodeState
from neostore.storage_node.node import StorageConfig, StorageNode

from harness import ThreadCluster, unstarted_cluster
from waiting import wait_until

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "neoctl-json.md"

#: The JSON Schema keywords the document may use, and the types.
KEYWORDS = frozenset({"type", "properties", "required", "additionalProperties", "items", "enum", "description"})
TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean", "null"})

#: Commands whose output shape depends on a positional argument's choice:
#: one schema per choice ("print cluster", "print node", ...).
SHAPE_CHOICES = {"print": "what"}

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


# -- the document ------------------------------------------------------------------------


def _blocks() -> list[tuple[str, str]]:
    """Every fenced code block of the document: (info string, text)."""
    return [(info.strip(), body) for info, body in _FENCE.findall(DOC.read_text(encoding="utf-8"))]


def _schema_name(info: str) -> str | None:
    words = info.split()
    return " ".join(words[2:]) if words[:2] == ["json", "schema"] else None


def _documented() -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The schemas by command, and the examples (``json`` blocks) that follow each."""
    schemas: dict[str, Any] = {}
    examples: dict[str, list[Any]] = {}
    current: str | None = None
    for info, body in _blocks():
        name = _schema_name(info)
        if name is not None:
            assert name, f"a schema block with no command name: {info!r}"
            assert name not in schemas, f"two schema blocks for {name!r}"
            schemas[name] = json.loads(body)
            examples[name] = []
            current = name
        elif info == "json" and current is not None:
            examples[current].append(json.loads(body))
    return schemas, examples


SCHEMAS, EXAMPLES = _documented()


# -- a validator for the subset ----------------------------------------------------------


def _type_of(value: Any) -> set[str]:
    """The schema types ``value`` (as json.loads gives it) is an instance of.
    Strict: ``integer`` is a number written without a fraction (an int)."""
    if value is None:
        return {"null"}
    if isinstance(value, bool):
        return {"boolean"}
    if isinstance(value, int):
        return {"integer", "number"}
    if isinstance(value, float):
        return {"number"}
    if isinstance(value, str):
        return {"string"}
    if isinstance(value, list):
        return {"array"}
    if isinstance(value, dict):
        return {"object"}
    raise TypeError(f"not a JSON value: {value!r}")


def _same(a: Any, b: Any) -> bool:
    """JSON equality (True is not 1, 1.0 is 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def validate(value: Any, schema: dict[str, Any], path: str = "$") -> str | None:
    """The first mismatch of ``value`` against ``schema``, as "JSON path:
    what", or None when it matches."""
    unknown = set(schema) - KEYWORDS
    if unknown:
        return f"{path}: schema uses unsupported keywords {sorted(unknown)}"
    if "type" in schema:
        allowed = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not _type_of(value) & set(allowed):
            return f"{path}: {json.dumps(value)[:80]} is not of type {' or '.join(allowed)}"
    if "enum" in schema and not any(_same(value, choice) for choice in schema["enum"]):
        return f"{path}: {json.dumps(value)[:80]} is not one of {schema['enum']}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                return f"{path}: required property {key!r} is missing"
        properties = schema.get("properties", {})
        for key, item in value.items():
            where = f"{path}.{key}" if re.fullmatch(r"[A-Za-z_]\w*", key) else f"{path}[{json.dumps(key)}]"
            if key in properties:
                problem = validate(item, properties[key], where)
                if problem:
                    return problem
            elif schema.get("additionalProperties", True) is False:
                return f"{where}: property not in the schema"
            elif isinstance(schema.get("additionalProperties"), dict):
                problem = validate(item, schema["additionalProperties"], where)
                if problem:
                    return problem
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            problem = validate(item, schema["items"], f"{path}[{index}]")
            if problem:
                return problem
    return None


def _schema_problems(schema: Any, path: str = "$") -> Iterator[str]:
    """What in a schema is outside the document's conventions."""
    if not isinstance(schema, dict):
        yield f"{path}: a schema must be an object"
        return
    for keyword in sorted(set(schema) - KEYWORDS):
        yield f"{path}: keyword {keyword!r} is not in the subset"
    types = schema.get("type")
    if types is not None:
        for name in types if isinstance(types, list) else [types]:
            if name not in TYPES:
                yield f"{path}: unknown type {name!r}"
    if "description" in schema and not (isinstance(schema["description"], str) and schema["description"].strip()):
        yield f"{path}: empty description"
    if "additionalProperties" in schema and schema["additionalProperties"] is not False:
        yield f"{path}: additionalProperties must be false"
    if "properties" in schema and schema.get("additionalProperties") is not False:
        yield f"{path}: an object schema needs additionalProperties false (the document is complete)"
    for key in schema.get("required", []):
        if key not in schema.get("properties", {}):
            yield f"{path}: required {key!r} is not a property"
    for key, sub in schema.get("properties", {}).items():
        if not isinstance(sub, dict) or "description" not in sub:
            yield f"{path}.{key}: no description"
        yield from _schema_problems(sub, f"{path}.{key}")
    if "items" in schema:
        yield from _schema_problems(schema["items"], f"{path}[]")


def check_output(command: str, out: str) -> Any:
    """``out`` parsed, after asserting it is one JSON document valid against
    the document's schema for ``command``."""
    assert command in SCHEMAS, f"docs/neoctl-json.md has no schema for {command!r}"
    try:
        value = json.loads(out)
    except json.JSONDecodeError as error:
        raise AssertionError(f"neoctl {command} --json printed no JSON document ({error}):\n{out}") from None
    problem = validate(value, SCHEMAS[command])
    assert problem is None, f"neoctl {command} --json does not match its schema: {problem}\n{out}"
    return value


# -- neoctl's commands, from its parser ----------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser] | None:
    for action in parser._actions:  # noqa: SLF001 - argparse keeps its subparsers there
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return dict(action.choices)
    return None


def _json_commands(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[str]:
    """Every runnable command path that takes --json ("print node", "set
    replicas", "check", ...)."""
    for name, sub in (_subcommands(parser) or {}).items():
        path = f"{prefix} {name}".strip()
        if _subcommands(sub) is not None:
            yield from _json_commands(sub, path)
            continue
        if "--json" not in sub._option_string_actions:  # noqa: SLF001
            continue
        choice_of = SHAPE_CHOICES.get(path)
        if choice_of is None:
            yield path
            continue
        [positional] = [action for action in sub._actions if action.dest == choice_of]  # noqa: SLF001
        assert positional.choices, f"{path}: {choice_of} has no choices"
        yield from (f"{path} {choice}" for choice in positional.choices)


# -- the document's own checks -------------------------------------------------------------


def test_every_command_that_takes_json_has_a_schema_and_every_schema_a_command() -> None:
    commands = set(_json_commands(neoctl.build_parser()))
    assert {"print node", "set replicas", "wait", "import"} <= commands, commands  # the walk found them
    assert sorted(commands - set(SCHEMAS)) == [], "commands with no 'json schema' block in docs/neoctl-json.md"
    assert sorted(set(SCHEMAS) - commands) == [], "schema blocks for commands neoctl does not have"


def test_json_is_accepted_before_and_after_every_command() -> None:
    parser = neoctl.build_parser()
    for command in _json_commands(parser):
        words = command.split()
        if words[0] in ("drop-node", "kill"):
            words.append("1")
        elif words[0] in ("truncate",):
            words.append("0x0")
        elif words[0] in ("add-master", "remove-master"):
            words.append("127.0.0.1:1")
        elif words[0] == "import":
            words.append("source.conf")
        elif words[:2] == ["set", "replicas"]:
            words.append("2")
        elif words[:2] == ["set", "cluster"]:
            words.append("RUNNING")
        assert parser.parse_args(["--json", *words]).json is True, command
        assert parser.parse_args([*words, "--json"]).json is True, command
        assert parser.parse_args(words).json is False, command


@pytest.mark.parametrize("command", sorted(SCHEMAS))
def test_schema_uses_the_documented_subset_and_describes_every_property(command: str) -> None:
    assert list(_schema_problems(SCHEMAS[command])) == []


@pytest.mark.parametrize("command", sorted(SCHEMAS))
def test_the_documented_example_matches_its_schema(command: str) -> None:
    assert EXAMPLES[command], f"no example (a ```json block) after the schema of {command!r}"
    for example in EXAMPLES[command]:
        assert validate(example, SCHEMAS[command]) is None, (command, validate(example, SCHEMAS[command]))


def test_the_exit_code_table_is_neoctls() -> None:
    constants = {name: getattr(neoctl, name) for name in dir(neoctl) if name.startswith("EXIT_")}
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*`(EXIT_\w+)`\s*\|", DOC.read_text(encoding="utf-8"), re.MULTILINE)
    assert {name: int(code) for code, name in rows} == constants


def test_the_validator_names_the_path_of_the_first_mismatch() -> None:
    schema = {"type": "object", "properties": {
        "rows": {"type": "array", "items": {"type": "object", "properties": {
            "n": {"type": "integer"}, "s": {"type": ["string", "null"], "enum": ["a", None]}},
            "required": ["n"], "additionalProperties": False}},
        "flag": {"type": "boolean", "enum": [True]}}, "additionalProperties": False}
    assert validate({"rows": [{"n": 1, "s": None}, {"n": 2, "s": "a"}], "flag": True}, schema) is None
    assert validate({"rows": [{"n": 1}, {"n": 2.5}]}, schema) == "$.rows[1].n: 2.5 is not of type integer"
    assert validate({"rows": [{"n": True}]}, schema) == "$.rows[0].n: true is not of type integer"
    assert validate({"rows": [{"s": "a"}]}, schema) == "$.rows[0]: required property 'n' is missing"
    assert validate({"rows": [{"n": 1, "s": "b"}]}, schema) == "$.rows[0].s: \"b\" is not one of ['a', None]"
    assert validate({"rows": [], "other": 1}, schema) == "$.other: property not in the schema"
    assert validate({"flag": 1}, schema) == "$.flag: 1 is not of type boolean"
    assert validate("x", schema) == "$: \"x\" is not of type object"
    assert validate(1, {"minimum": 0}) == "$: schema uses unsupported keywords ['minimum']"


# -- running neoctl ------------------------------------------------------------------------


class Neoctl:
    """``neoctl --json ...`` against one cluster, in this process."""

    def __init__(self, masters: list[str], name: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.base = ["--masters", ",".join(masters), "--cluster", name]
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str]:
        self.capsys.readouterr()
        code = neoctl.main([*self.base, "--json", *args])
        return code, self.capsys.readouterr().out

    def check(self, command: str, *args: str, exit: int = neoctl.EXIT_OK) -> Any:
        """Run ``command`` (its schema's name) with ``args``; assert the exit
        code and the output's schema; the output parsed."""
        code, out = self(*command.split(), *args)
        assert code == exit, f"neoctl {command} {' '.join(args)}: exit {code}, not {exit}:\n{out}"
        return check_output(command, out)


def _commit(cluster: ThreadCluster, db: ZODB.DB, count: int, prefix: str) -> list[bytes]:
    """``count`` transactions of a few objects each; their TIDs."""
    tids = []
    for index in range(count):
        with db.transaction() as conn:
            conn.root()[f"{prefix}{index}"] = PersistentMapping({i: PersistentMapping(v=i) for i in range(5)})
        tids.append(db.lastTransaction())
    wait_until(lambda: not cluster.master.state.pending_decisions, "every decision applied", timeout=60)
    return tids


def _file_storage(tmp_path: pathlib.Path, transactions: int = 8) -> str:
    """A small FileStorage and the ZConfig file `neoctl import` reads it from."""
    path = str(tmp_path / "Data.fs")
    db = ZODB.DB(ZODB.FileStorage.FileStorage(path, create=True))
    try:
        for index in range(transactions):
            with db.transaction() as conn:
                conn.root()[f"doc{index}"] = PersistentMapping(version=index)
    finally:
        db.close()
    config = tmp_path / "source.conf"
    config.write_text(f"<filestorage>\n  path {path}\n  read-only true\n</filestorage>\n")
    return str(config)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadCluster]:
    """A healthy cluster holding some data, for the commands that leave it as they found it."""
    with ThreadCluster(str(tmp_path_factory.mktemp("neoctl-json")), num_storages=3, num_partitions=6,
                       num_replicas=2) as cluster:
        db = ZODB.DB(cluster.client())
        try:
            _commit(cluster, db, 3, "data")
        finally:
            db.close()
        yield cluster


@pytest.fixture
def on_shared(shared: ThreadCluster, capsys: pytest.CaptureFixture[str]) -> Neoctl:
    return Neoctl(shared.masters, shared.name, capsys)


# -- commands on the shared cluster ---------------------------------------------------------


def test_print_cluster_and_ids(shared: ThreadCluster, on_shared: Neoctl) -> None:
    info = on_shared.check("print cluster")
    assert info["state"] == "RUNNING" and info["masters"] == shared.masters and info["leader"] == shared.masters[0]
    assert (info["num_partitions"], info["num_replicas"]) == (6, 2)
    ids = on_shared.check("print ids")
    assert ids == {key: info[key] for key in ("last_oid", "last_tid", "table_version")}
    assert ids["last_tid"] != "0x0000000000000000"
    # --json after the command prints the same.
    on_shared.capsys.readouterr()
    assert neoctl.main([*on_shared.base, "print", "ids", "--json"]) == neoctl.EXIT_OK
    assert json.loads(on_shared.capsys.readouterr().out) == ids


def test_print_node_and_pt(shared: ThreadCluster, on_shared: Neoctl) -> None:
    nodes = on_shared.check("print node")
    assert sorted(n["node_id"] for n in nodes) == sorted(s.node_id for s in shared.storages)
    assert all(n["state"] == "RUNNING" and n["objects"] > 0 and n["size_bytes"] > 0 for n in nodes), nodes
    table = on_shared.check("print pt")
    assert len(table["rows"]) == 6 and all(len(row) == 2 for row in table["rows"])
    assert [n["cells"] for n in table["nodes"]] == [n["cells"] for n in nodes]


def test_health_status_and_wait_on_a_healthy_cluster(on_shared: Neoctl) -> None:
    assert on_shared.check("health") == {"health": "HEALTHY", "problems": []}
    assert on_shared.check("status") == []
    # Once every cell is UP_TO_DATE, wait prints the empty list: no cell left waiting.
    assert on_shared.check("wait", "--timeout", "60") == []


def test_check(on_shared: Neoctl) -> None:
    rows = on_shared.check("check")
    assert [row["partition"] for row in rows] == list(range(6))
    assert all(row["result"] == "ok" and len(row["replicas"]) == 2 for row in rows), rows
    assert [row["partition"] for row in on_shared.check("check", "4", "1")] == [1, 4]


def test_tweak_dry_run_and_add_node_with_none_pending_change_nothing(shared: ThreadCluster,
                                                                     on_shared: Neoctl) -> None:
    version = shared.master.state.table.version
    plan = on_shared.check("tweak", "--dry-run")
    assert plan["moves"] == [], plan["moves"]  # the harness's table is balanced
    table = on_shared.check("add-node", "--no-rebalance")
    assert "moves" not in table
    assert shared.master.state.table.version == version


def test_set_cluster_stopping_then_running(on_shared: Neoctl) -> None:
    try:
        assert on_shared.check("set cluster", "STOPPING")["state"] == "STOPPING"
    finally:
        assert on_shared.check("set cluster", "RUNNING")["state"] == "RUNNING"


def test_import_verify_only_reports_differences(tmp_path: pathlib.Path, on_shared: Neoctl) -> None:
    """The shared cluster is not a copy of the source: exit 4, and the JSON says why."""
    summary = on_shared.check("import", _file_storage(tmp_path), "--verify-only",
                              exit=neoctl.EXIT_INCONSISTENT)
    assert set(summary) == {"verify"} and summary["verify"]["differences"] >= 1, summary
    assert summary["verify"]["first_differences"], summary


def test_nothing_on_stdout_when_no_master_answers_except_health(capsys: pytest.CaptureFixture[str]) -> None:
    nowhere = Neoctl([f"127.0.0.1:{free_port()}"], "nowhere", capsys)
    assert nowhere("print", "cluster") == (neoctl.EXIT_UNREACHABLE, "")
    report = nowhere.check("health", exit=neoctl.EXIT_UNAVAILABLE)
    assert report["health"] == "UNAVAILABLE" and "no master reachable" in report["problems"][0]


# -- commands that change a cluster: clusters of their own -----------------------------------


def test_start(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    with unstarted_cluster(str(tmp_path), "fresh", num_partitions=3) as (master, _):
        wait_until(lambda: len(master.state.table.nodes) == 2, "both storage nodes registered", timeout=60)
        run = Neoctl([master.address], "fresh", capsys)
        assert run.check("print cluster")["state"] == "EMPTY"
        empty = run.check("print pt")
        assert empty["rows"] == [] and [n["cells"] for n in empty["nodes"]] == [0, 0]
        assert all(n["objects"] is None for n in run.check("print node"))  # no readable cell yet
        report = run.check("health", exit=neoctl.EXIT_UNAVAILABLE)
        assert "no partition table yet" in report["problems"][0]
        table = run.check("start")
        assert len(table["rows"]) == 3 and all(len(row) == 2 for row in table["rows"])
        # On a running cluster, start prints the table it runs with.
        assert run.check("start") == table


def test_truncate_kill_drop_node_add_node_tweak_set_replicas(tmp_path: pathlib.Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    with ThreadCluster(str(tmp_path), num_storages=3, num_partitions=4, num_replicas=2) as cluster:
        run = Neoctl(cluster.masters, cluster.name, capsys)
        # The client stays connected through the truncation: a client just
        # closed may leave a transaction the master aborts (and truncate
        # waits for) only once it notices that client left.
        db = ZODB.DB(cluster.client())
        tids = _commit(cluster, db, 3, "data")
        everyone = sorted(s.node_id for s in cluster.storages)

        result = run.check("truncate", tids[0].hex(), "--yes")
        db.close()
        assert result["truncated_after"] == "0x" + tids[0].hex()
        assert (sorted(result["nodes_done"]), result["nodes_later"]) == (everyone, [])
        assert result["transactions_deleted"] > 0 and result["new_last_tid"] > "0x" + tids[-1].hex()
        assert run.check("print cluster")["state"] == "RUNNING"

        # A node down: its cells stay OUT_OF_DATE until it comes back.
        victim = cluster.storages[0]
        table = run.check("kill", str(victim.node_id))
        assert {n["node_id"]: n["state"] for n in table["nodes"]}[victim.node_id] == "DOWN"
        rows = run.check("status")
        assert rows and {(row["node_id"], row["state"]) for row in rows} == {(victim.node_id, "OUT_OF_DATE")}
        assert run.check("wait", "--timeout", "0", exit=neoctl.EXIT_TIMEOUT) == rows
        report = run.check("health", exit=neoctl.EXIT_DEGRADED)
        assert f"storage node {victim.node_id} at {victim.address} is DOWN" in report["problems"]
        checked = run.check("check", exit=neoctl.EXIT_NOT_COMPARED)
        assert {row["result"] for row in checked} == {"ok", "not compared"}, checked
        nodes = {n["node_id"]: n for n in run.check("print node")}
        assert nodes[victim.node_id]["objects"] is None and nodes[victim.node_id]["size_bytes"] is None

        # Its cells move to the others; then it is gone.
        table = run.check("drop-node", str(victim.node_id))
        assert table["moves"], table
        run.check("status")  # whatever the replication shows by now, it matches the schema
        assert run.check("wait", "--timeout", "60", "--interval", "0.05") == []
        wait_until(lambda: victim.node_id not in {n.node_id for n in cluster.master.state.table.nodes},
                   "the dropped node gone from the table", timeout=60)

        # A new node: admitted without moves, then the table rebalanced.
        newcomer = StorageNode(StorageConfig(rpc=cluster.rpc, masters=cluster.masters,
                                             data_dir=str(tmp_path / "newcomer")))
        newcomer.start()
        cluster.storages.append(newcomer)
        wait_until(lambda: any(n.state == NodeState.PENDING for n in cluster.master.state.table.nodes),
                   "the new node registered", timeout=60)
        pending = next(n.node_id for n in cluster.master.state.table.nodes if n.state == NodeState.PENDING)
        table = run.check("add-node", "--no-rebalance", str(pending))
        assert "moves" not in table
        assert {n["node_id"]: n["state"] for n in table["nodes"]}[pending] == "RUNNING"
        plan = run.check("tweak", "--dry-run")
        assert plan["moves"], plan
        assert run.check("tweak")["moves"] == plan["moves"]
        assert run.check("wait", "--timeout", "60", "--interval", "0.05") == []
        assert run.check("add-node")["moves"] == []  # nothing pending, nothing to move

        table = run.check("set replicas", "3")
        assert table["num_replicas"] == 3 and table["moves"], table
        assert run.check("wait", "--timeout", "60", "--interval", "0.05") == []
        assert {row["result"] for row in run.check("check")} == {"ok"}


def test_add_master_and_remove_master(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ThreadCluster(str(tmp_path), num_storages=2, num_partitions=2, num_replicas=2, num_masters=3) as cluster:
        run = Neoctl(cluster.masters, cluster.name, capsys)
        # Every master answers and follows the leader (what a membership change needs).
        wait_until(lambda: run("health")[0] == neoctl.EXIT_OK, "every master following the leader", timeout=60,
                   interval=0.05)  # a round of rpcs per look
        info = run.check("print cluster")
        assert sorted(info["masters"]) == sorted(cluster.masters) and info["leader"] in cluster.masters
        address = f"127.0.0.1:{free_port()}"
        added = run.check("add-master", address)
        assert added["added"] is True and added["address"] == address
        assert [m["address"] for m in added["members"]] == [*cluster.masters, address]
        removed = run.check("remove-master", address)
        assert removed["removed"] is True and removed["node_id"] == added["node_id"]
        assert [m["address"] for m in removed["members"]] == cluster.masters


def test_import_with_verify_then_verify_only_then_incremental(tmp_path: pathlib.Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    source = _file_storage(tmp_path, transactions=8)
    with ThreadCluster(str(tmp_path / "cluster"), num_storages=2, num_partitions=2, num_replicas=2) as cluster:
        run = Neoctl(cluster.masters, cluster.name, capsys)
        summary = run.check("import", source, "--verify")
        assert set(summary) == {"import", "verify"}
        assert summary["import"]["transactions"] == 9  # the root's creation, then 8
        assert summary["verify"]["transactions"] == 9 and summary["verify"]["differences"] == 0
        assert summary["import"]["last_tid"] == run.check("print ids")["last_tid"]
        assert set(run.check("import", source, "--verify-only")) == {"verify"}
        again = run.check("import", source, "--incremental")
        assert again["import"]["transactions"] == 0 and again["import"]["first_tid"] is None

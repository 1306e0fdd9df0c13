"""Data-driven Raft scenarios: scripts in ``scenarios/*.txt`` with their text traces.

Each script is a list of blocks::

    command arg arg key=value
    ----
    expected output (messages delivered, states...)

separated by blank lines; ``#`` starts a comment line.  The output of every
command is compared with the expected text.  After an intended change of
behaviour, regenerate the expected parts and review the diff::

    NEOSTORE_RAFT_REWRITE=1 pytest tests/raft/test_raft_scenarios.py

Commands (node ids are integers):

* ``network 1 2 3 [pre_vote=false] [check_quorum=false] [max_entries=N]``
* ``campaign N`` / ``tick N [times]`` / ``tick-all [times]``
* ``propose N data`` / ``read-index N context`` / ``transfer N target``
* ``add-voter N id`` / ``remove-voter N id`` (proposed on leader N)
* ``isolate N`` / ``heal`` / ``restart N`` / ``compact N``
* ``stabilize``: deliver every message until quiet, listing them
* ``status``: one line per node
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from neostore.raft import (
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    Message,
    RaftError,
    decode_conf_change_record,
)

from raft_network import Network

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.txt"))
SEPARATOR = "----"


def format_message(message: Message) -> str:
    parts = [f"{message.source}->{message.target} {message.type.name} term={message.term}"]
    if message.log_term or message.index:
        parts.append(f"log_term={message.log_term} index={message.index}")
    if message.entries:
        parts.append("entries=[" + ", ".join(_format_entry(e) for e in message.entries) + "]")
    if message.commit:
        parts.append(f"commit={message.commit}")
    if message.reject:
        parts.append(f"REJECT hint={message.reject_hint}")
    if message.snapshot is not None:
        parts.append(f"snapshot={message.snapshot.index}@{message.snapshot.term}")
    if message.context:
        parts.append(f"context={message.context.decode()}")
    if message.leader_transfer:
        parts.append("transfer")
    return " ".join(parts)


def _format_entry(entry: Entry) -> str:
    if entry.type is EntryType.CONF_CHANGE:
        voters = sorted(decode_conf_change_record(entry.data).conf_state.voters)
        return f"{entry.index}@{entry.term} voters={voters}"
    return f"{entry.index}@{entry.term} {entry.data.decode() or '-'}"


class ScenarioRunner:
    """Runs one command at a time against a ``Network``, returning its output."""

    def __init__(self) -> None:
        self.network: Network | None = None
        self.log: list[str] = []

    @property
    def net(self) -> Network:
        if self.network is None:
            raise AssertionError("the script must start with `network`")
        return self.network

    def run(self, line: str) -> str:
        words = line.split()
        command, args = words[0], words[1:]
        positional = [a for a in args if "=" not in a]
        options = dict(a.split("=", 1) for a in args if "=" in a)
        handler: Callable[[list[str], dict[str, str]], None] = getattr(
            self, "do_" + command.replace("-", "_")
        )
        self.log = []
        start = len(self.network.delivered) if self.network is not None else 0
        try:
            handler(positional, options)
        except RaftError as error:
            self.log.append(f"error: {type(error).__name__}: {error}")
        if self.network is not None:
            self.log[:0] = [
                ("dropped " if blocked else "") + format_message(message)
                for message, blocked in self.network.delivered[start:]
            ]
        return "\n".join(self.log) if self.log else "ok"

    def do_network(self, ids: list[str], options: dict[str, str]) -> None:
        self.network = Network(
            [int(i) for i in ids],
            pre_vote=options.get("pre_vote", "true") == "true",
            check_quorum=options.get("check_quorum", "true") == "true",
            max_entries_per_append=int(options.get("max_entries", "64")),
        )

    def do_campaign(self, args: list[str], options: dict[str, str]) -> None:
        self.net.nodes[int(args[0])].campaign()
        self.net.process(int(args[0]))

    def do_tick(self, args: list[str], options: dict[str, str]) -> None:
        self.net.tick(int(args[0]), int(args[1]) if len(args) > 1 else 1)

    def do_tick_all(self, args: list[str], options: dict[str, str]) -> None:
        self.net.tick_all(int(args[0]) if args else 1, settle=False)

    def do_propose(self, args: list[str], options: dict[str, str]) -> None:
        index = self.net.nodes[int(args[0])].propose(args[1].encode())
        self.net.process(int(args[0]))
        self.log.append(f"index {index}")

    def do_read_index(self, args: list[str], options: dict[str, str]) -> None:
        self.net.nodes[int(args[0])].read_index(args[1].encode())
        self.net.process(int(args[0]))

    def do_transfer(self, args: list[str], options: dict[str, str]) -> None:
        self.net.nodes[int(args[0])].transfer_leadership(int(args[1]))
        self.net.process(int(args[0]))

    def _conf_change(self, kind: ConfChangeType, args: list[str]) -> None:
        leader, node_id = int(args[0]), int(args[1])
        if kind is ConfChangeType.ADD_VOTER and node_id not in self.net.nodes:
            self.net.start(node_id)
        index = self.net.nodes[leader].propose_conf_change(ConfChange(kind, node_id))
        self.net.process(leader)
        self.log.append(f"index {index}")

    def do_add_voter(self, args: list[str], options: dict[str, str]) -> None:
        self._conf_change(ConfChangeType.ADD_VOTER, args)

    def do_remove_voter(self, args: list[str], options: dict[str, str]) -> None:
        self._conf_change(ConfChangeType.REMOVE_VOTER, args)

    def do_isolate(self, args: list[str], options: dict[str, str]) -> None:
        self.net.isolate(int(args[0]))

    def do_heal(self, args: list[str], options: dict[str, str]) -> None:
        self.net.heal()

    def do_restart(self, args: list[str], options: dict[str, str]) -> None:
        self.net.start(int(args[0]))

    def do_compact(self, args: list[str], options: dict[str, str]) -> None:
        node_id = int(args[0])
        node, store = self.net.nodes[node_id], self.net.stores[node_id]
        store.create_snapshot(node.applied_index, node.applied_conf_state, b"image")
        store.compact(node.applied_index)
        self.log.append(f"snapshot and first index {store.first_index()}")

    def do_stabilize(self, args: list[str], options: dict[str, str]) -> None:
        self.net.stabilize()

    def do_status(self, args: list[str], options: dict[str, str]) -> None:
        for node_id in self.net.ids:
            node = self.net.nodes[node_id]
            applied = ",".join(d.decode() for d in self.net.applied_data(node_id)) or "-"
            reads = ",".join(
                f"{r.context.decode()}@{r.index}" for r in self.net.read_states[node_id]
            )
            self.log.append(
                f"{node_id}: {node.role.value} term={node.term} lead={node.leader_id} "
                f"commit={node.commit_index} last={node.last_index} "
                f"voters={sorted(node.conf_state.voters)} applied={applied}"
                + (f" reads={reads}" if reads else "")
            )


def parse(text: str) -> list[tuple[list[str], str, str]]:
    """Blocks of (leading comment lines, command, expected output)."""
    blocks = []
    comments: list[str] = []
    lines = text.splitlines()
    position = 0
    while position < len(lines):
        line = lines[position]
        position += 1
        if not line.strip():
            continue
        if line.startswith("#"):
            comments.append(line)
            continue
        command = line.strip()
        if position >= len(lines) or lines[position] != SEPARATOR:
            raise ValueError(f"line {position}: `{command}` must be followed by {SEPARATOR}")
        position += 1
        expected = []
        while position < len(lines) and lines[position].strip():
            expected.append(lines[position])
            position += 1
        blocks.append((comments, command, "\n".join(expected)))
        comments = []
    return blocks


def render(blocks: list[tuple[list[str], str, str]]) -> str:
    parts = []
    for comments, command, output in blocks:
        parts.append("\n".join([*comments, command, SEPARATOR, output]))
    return "\n\n".join(parts) + "\n"


@pytest.mark.parametrize("path", SCENARIOS, ids=[path.stem for path in SCENARIOS])
def test_scenario(path: Path) -> None:
    blocks = parse(path.read_text())
    runner = ScenarioRunner()
    actual = [(comments, command, runner.run(command)) for comments, command, _ in blocks]
    if os.environ.get("NEOSTORE_RAFT_REWRITE"):
        path.write_text(render(actual))
        return
    for (_, command, expected), (_, _, output) in zip(blocks, actual, strict=True):
        assert output == expected, f"{path.name}: `{command}` printed:\n{output}"


def test_there_are_scenarios() -> None:
    assert len(SCENARIOS) >= 4

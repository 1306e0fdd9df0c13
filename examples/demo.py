"""A small ZODB program, run by `make demo` against a fresh local cluster.

It opens the database from a zodburi URI (so the only neostore-specific
thing is the URI), commits a few objects, then reads them back through a
second, independent client — as another application process would.
"""

from __future__ import annotations

import os
import time

import transaction
import ZODB
import zodburi
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping


def open_db(uri: str) -> ZODB.DB:
    factory, dbkw = zodburi.resolve_uri(uri)
    return ZODB.DB(factory(), **dbkw)


def main() -> None:
    uri = f"neostore://{os.environ['NEOSTORE_CLUSTER']}@{os.environ['NEOSTORE_MASTERS']}"
    print(f"demo: opening {uri}")
    writer = open_db(uri)
    started = time.perf_counter()
    with writer.transaction("demo: accounts") as conn:
        root = conn.root()
        runs = root.setdefault("runs", 0) + 1
        root["runs"] = runs
        accounts = root.setdefault("accounts", OOBTree())
        for number in range(100):
            account = accounts.get(number)
            if account is None:
                account = accounts[number] = PersistentMapping(owner=f"owner-{number}", balance=0)
            account["balance"] += 10
    elapsed = time.perf_counter() - started
    print(f"demo: run {runs}: committed 100 accounts (+10 each) in {elapsed * 1000:.1f} ms")
    with writer.transaction("demo: transfer") as conn:
        accounts = conn.root()["accounts"]
        accounts[0]["balance"] -= 5
        accounts[1]["balance"] += 5
    print("demo: committed a transfer of 5 from account 0 to account 1")

    reader = open_db(uri)
    with reader.transaction() as conn:
        root = conn.root()
        accounts = root["accounts"]
        total = sum(account["balance"] for account in accounts.values())
        print(f"demo: a second client reads {len(accounts)} accounts, run counter {root['runs']}, "
              f"account 0 = {accounts[0]['balance']}, account 1 = {accounts[1]['balance']}, "
              f"total balance = {total}")
        assert root["runs"] == runs
        assert total == 100 * 10 * runs, total
    history = writer.history(b"\0" * 8, size=3) if hasattr(writer, "history") else []
    for entry in history:
        print(f"demo: root revision {entry['tid'].hex()} {entry['description']!r}")
    reader.close()
    writer.close()
    transaction.abort()
    print("demo: OK — data stays in .demo-data; run `make demo` again to see the counter grow")


if __name__ == "__main__":
    main()

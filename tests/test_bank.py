"""Concurrent ZODB clients moving money between accounts: the total is
conserved, and every transfer a client saw committed is in the database.

Each client is its own NeoStorage (its own session and invalidation stream)
against a cluster of separate processes; conflicts are retried the way ZODB
applications retry them (``transaction.manager.attempts``).
"""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest
import transaction
import ZODB
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping

from neostore.client import NeoStorage
from neostore.launcher import LocalCluster

pytestmark = pytest.mark.process

ACCOUNTS = 8
INITIAL = 1000
CLIENTS = 4
TRANSFERS = 40


def test_concurrent_transfers_conserve_the_total(tmp_path: Any) -> None:
    with LocalCluster(str(tmp_path / "bank"), name="bank") as cluster:
        setup = ZODB.DB(NeoStorage(cluster.masters, "bank"))
        with setup.transaction() as conn:
            accounts = conn.root()["accounts"] = OOBTree()
            for number in range(ACCOUNTS):
                accounts[number] = PersistentMapping(balance=INITIAL)
            conn.root()["log"] = OOBTree()
        setup.close()

        outcomes: dict[str, int] = {"committed": 0, "conflicts": 0}
        committed_ids: list[str] = []
        failures: list[BaseException] = []
        lock = threading.Lock()

        def client(index: int) -> None:
            rng = random.Random(index)
            db = ZODB.DB(NeoStorage(cluster.masters, "bank"))
            manager = transaction.TransactionManager()
            conn = db.open(manager)
            try:
                for number in range(TRANSFERS):
                    source, target = rng.sample(range(ACCOUNTS), 2)
                    amount = rng.randint(1, 50)
                    transfer_id = f"{index}-{number}"
                    tries = 0
                    for attempt in manager.attempts(30):
                        tries += 1
                        with attempt:
                            root = conn.root()
                            root["accounts"][source]["balance"] -= amount
                            root["accounts"][target]["balance"] += amount
                            root["log"][transfer_id] = amount
                    with lock:
                        outcomes["committed"] += 1
                        outcomes["conflicts"] += tries - 1
                        committed_ids.append(transfer_id)
            except BaseException as error:  # noqa: BLE001 - reported below
                failures.append(error)
            finally:
                conn.close()
                db.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(240)
        assert not failures, failures
        assert outcomes["committed"] == CLIENTS * TRANSFERS

        check = ZODB.DB(NeoStorage(cluster.masters, "bank"))
        with check.transaction() as conn:
            root = conn.root()
            balances = [root["accounts"][n]["balance"] for n in range(ACCOUNTS)]
            assert sum(balances) == ACCOUNTS * INITIAL
            assert sorted(root["log"].keys()) == sorted(committed_ids)
        check.close()
        print(f"bank: {outcomes['committed']} transfers committed, "
              f"{outcomes['conflicts']} conflicts retried")

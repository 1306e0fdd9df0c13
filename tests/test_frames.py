"""Framed calls (neostore/frames.py): clients' loads and votes, and the
masters' Commit orders, over plain sockets next to gRPC.

Real storage nodes and masters (ThreadCluster) for what the cluster does
with them; a FramesServer around a small servicer for what the transport
alone must survive (hostile bytes, a node restarting under a pooled
connection).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ZODB
from persistent.mapping import PersistentMapping
from ZODB.utils import maxtid

from neostore import errors, frames, rpc
from neostore.client.cluster import FRAMED_METHODS
from neostore.launcher import free_port
from neostore.protocol import master_pb2, storage_pb2, storage_pb2_grpc

from harness import ThreadCluster
from waiting import wait_until

STORAGE = storage_pb2.DESCRIPTOR.services_by_name["Storage"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadCluster]:
    with ThreadCluster(str(tmp_path_factory.mktemp("frames")), name="framed") as running:
        yield running


def _framed_calls(node_frames_addresses: set[str]) -> int:
    return sum(channel.calls for channel in frames.shared_channels.values()
               if channel.address in node_frames_addresses)


def test_loads_and_votes_go_as_frames_and_commit_orders_too(cluster: ThreadCluster) -> None:
    addresses = {node.frames_address for node in cluster.storages}
    assert all(addresses) and len(addresses) == len(cluster.storages)
    table = cluster.master.state.table
    assert {node.frames_address for node in table.nodes} == addresses  # advertised to every client
    db = ZODB.DB(cluster.client())
    try:
        before = _framed_calls(addresses)
        served_before = sum(node.frames_served("Vote") + node.frames_served("Commit") for node in cluster.storages)
        with db.transaction() as conn:
            conn.root()["framed"] = PersistentMapping(value=1)
        with db.transaction() as conn:
            conn.root()["framed"]["value"] = 2
        fresh = cluster.client()
        root = fresh.load(b"\0" * 8)[0]
        assert root
        assert fresh.loadBefore(b"\0" * 8, maxtid)[0] == root
        assert _framed_calls(addresses) > before  # the votes and loads: no fallback to gRPC
        # Votes from the client and Commit orders from the master came as frames.
        served = sum(node.frames_served("Vote") + node.frames_served("Commit") for node in cluster.storages)
        assert served >= served_before + 2 * 2 * 2  # 2 transactions, 2 replicas, a vote and a commit each
    finally:
        db.close()


def test_begin_finish_and_raft_steps_go_as_frames(tmp_path: Any) -> None:
    with ThreadCluster(str(tmp_path), name="framed-raft", num_masters=3) as raft:
        framed = {master.frames_address for master in raft.master_nodes}
        assert all(framed) and len(framed) == 3
        db = ZODB.DB(raft.client())
        try:
            before = _framed_calls(framed)
            for value in range(3):
                with db.transaction() as conn:
                    conn.root()["value"] = value
            assert _framed_calls(framed) >= before + 3  # the Finishes, at least
            assert sum(master.frames_served("Finish") for master in raft.master_nodes) >= 3
            # Once a follower answered, the leader sends it its Steps as frames.
            steps = sum(master.frames_served("Step") for master in raft.master_nodes)
            for value in range(3, 8):
                with db.transaction() as conn:
                    conn.root()["value"] = value
            assert sum(master.frames_served("Step") for master in raft.master_nodes) > steps
        finally:
            db.close()


class _Recorder:
    """A DB stand-in: what the invalidation stream hands to ZODB."""

    def __init__(self) -> None:
        self.tids: list[bytes] = []
        self._arrived = threading.Condition()

    def invalidate(self, tid: bytes, oids: Any) -> None:
        with self._arrived:
            self.tids.append(tid)
            self._arrived.notify_all()

    def wait_for(self, tid: bytes, timeout: float = 30.0) -> bool:
        with self._arrived:
            return self._arrived.wait_for(lambda: tid in self.tids, timeout)

    def invalidateCache(self) -> None:  # noqa: N802 - ZODB's name
        pass

    def transform_record_data(self, data: bytes) -> bytes:
        return data

    def untransform_record_data(self, data: bytes) -> bytes:
        return data


def test_the_invalidation_stream_comes_as_frames(cluster: ThreadCluster) -> None:
    streams = cluster.master.frames_served("Subscribe")
    watcher = cluster.client()
    recorder = _Recorder()
    watcher.registerDB(recorder)
    assert cluster.master.frames_served("Subscribe") == streams + 1  # the stream started over frames
    db = ZODB.DB(cluster.client())
    try:
        with db.transaction() as conn:
            conn.root()["streamed"] = 1
        assert recorder.wait_for(db.lastTransaction()), "the commit's invalidation never came"
    finally:
        db.close()
        watcher.close()


def test_a_master_whose_frames_port_serves_no_streams_streams_over_grpc(tmp_path: Any) -> None:
    """A master of the version before streams as frames answers "no method":
    its clients follow its stream over gRPC."""
    with ThreadCluster(str(tmp_path), name="old-frames") as old:
        served = old.master._frames  # noqa: SLF001 - make it the older kind
        del served._methods["Subscribe"]  # noqa: SLF001
        served._streams.discard("Subscribe")  # noqa: SLF001
        served._pumped.pop("Subscribe")  # noqa: SLF001
        watcher = old.client()
        recorder = _Recorder()
        watcher.registerDB(recorder)
        db = ZODB.DB(old.client())
        try:
            with db.transaction() as conn:
                conn.root()["streamed"] = 1
            assert recorder.wait_for(db.lastTransaction()), "the commit's invalidation never came"
            assert old.master.frames_served("Subscribe") == 0
        finally:
            db.close()
            watcher.close()


def test_a_wrong_cluster_name_is_refused_on_the_frames_port_without_naming_the_cluster(
        cluster: ThreadCluster) -> None:
    channel = frames.FramesChannel(rpc.RpcConfig(cluster_name="other"), cluster.storages[0].frames_address)
    try:
        with pytest.raises(errors.WrongCluster) as refused:
            channel.call("LoadBefore", storage_pb2.LoadBeforeRequest(oid=b"\0" * 8, before_tid=maxtid),
                          storage_pb2.LoadReply, 5, "node")
        assert "framed" not in str(refused.value)
    finally:
        channel.close()


class _Refusing:
    """A test servicer: any method it does not define is refused."""

    def __getattr__(self, name: str) -> Any:
        def refuse(request: Any, context: Any) -> Any:
            raise errors.BadRequest(f"{name} is not served by this test servicer")
        return refuse


class _Servicer(_Refusing):
    """Answers LoadBefore with the oid it was asked; blocks on ``hold``."""

    def __init__(self) -> None:
        self.hold = threading.Event()
        self.hold.set()
        self.after_reply = threading.Event()  # what answers early waits for, once answered
        self.finished: list[bytes] = []

    def LoadBefore(self, request: storage_pb2.LoadBeforeRequest, context: Any) -> storage_pb2.LoadReply:
        self.hold.wait(10)
        if request.oid == b"bad":
            raise errors.NotFound("no such object")
        if request.oid.startswith(b"early"):
            context.reply_now(storage_pb2.LoadReply(serial=request.oid))
            assert self.after_reply.wait(10)
            self.finished.append(request.oid)
            if request.oid == b"early-then-fail":
                raise errors.NotFound("after the answer: nobody hears it")
            return storage_pb2.LoadReply(serial=b"dropped: answered already")
        return storage_pb2.LoadReply(serial=request.oid)


@pytest.fixture
def server() -> Iterator[tuple[frames.FramesServer, _Servicer]]:
    servicer = _Servicer()
    serving = frames.FramesServer(rpc.RpcConfig(cluster_name="t", max_message_bytes=1 << 16), "127.0.0.1:0",
                                  [(STORAGE, servicer)])
    serving.start()
    yield serving, servicer
    serving.stop()


def _load(channel: frames.FramesChannel, oid: bytes, timeout: float = 5) -> Any:
    return channel.call("LoadBefore", storage_pb2.LoadBeforeRequest(oid=oid, before_tid=maxtid),
                        storage_pb2.LoadReply, timeout, "test node")


def _raw(port: int, data: bytes) -> bytes:
    """What the server answers to ``data`` on a new connection, until it closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(data)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
        return answer


def _hello(name: str = "t") -> bytes:
    return struct.pack("!IB", len(name) + 1, frames.HELLO) + name.encode()


def test_hostile_bytes_get_an_error_or_a_closed_connection_and_the_server_goes_on(server: Any) -> None:
    serving, _ = server
    port = serving.port
    assert _raw(port, b"\xff" * 64)[4:5] in (bytes([frames.ERROR]), b"")  # a giant length: refused
    assert _raw(port, b"GET / HTTP/1.1\r\n\r\n")[4:5] in (bytes([frames.ERROR]), b"")
    assert _raw(port, struct.pack("!IB", 1, frames.CALL))[4:5] == bytes([frames.ERROR])  # a call before HELLO
    assert _raw(port, _hello() + struct.pack("!IB", 1 << 30, frames.CALL))[5 + 4:5 + 5] == bytes([frames.ERROR])
    garbled = _hello() + struct.pack("!IBB", 2 + len(b"LoadBefore") + 3, frames.CALL, len(b"LoadBefore")) \
        + b"LoadBefore" + b"\xff\xff\xff"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(garbled)
        time.sleep(0.2)
        answer = connection.recv(65536)
    assert bytes([frames.ERROR]) in answer and b"BadRequest" in answer  # a request that does not decode
    channel = frames.FramesChannel(rpc.RpcConfig(cluster_name="t"), f"127.0.0.1:{port}")
    try:
        assert _load(channel, b"oid-1").serial == b"oid-1"  # still serving
        with pytest.raises(errors.NotFound, match="no such object .from test node."):
            _load(channel, b"bad")  # an error crosses as its own class
        with pytest.raises(errors.BadRequest, match="not served"):
            channel.call("Vote", storage_pb2.VoteRequest(), storage_pb2.VoteReply, 5, "test node")
        assert _load(channel, b"oid-2").serial == b"oid-2"  # an error leaves the connection usable
    finally:
        channel.close()


def test_a_method_may_answer_before_it_ends_and_its_connection_then_serves_the_next_call(server: Any) -> None:
    serving, servicer = server
    channel = frames.FramesChannel(rpc.RpcConfig(cluster_name="t"), f"127.0.0.1:{serving.port}")
    try:
        for oid in (b"early", b"early-then-fail"):
            servicer.after_reply.clear()
            assert _load(channel, oid).serial == oid  # while the method still runs
            assert oid not in servicer.finished
            servicer.after_reply.set()
            # The pooled connection again: what the method returned or raised
            # after its answer was not sent (this call gets its own answer).
            assert _load(channel, b"next").serial == b"next"
            assert servicer.finished[-1] == oid
        assert len(channel._idle) == 1  # noqa: SLF001 - one connection served it all
    finally:
        channel.close()


def test_a_call_that_times_out_fails_as_deadline_exceeded_and_the_next_one_works(server: Any) -> None:
    serving, servicer = server
    channel = frames.FramesChannel(rpc.RpcConfig(cluster_name="t"), f"127.0.0.1:{serving.port}")
    try:
        servicer.hold.clear()
        with pytest.raises(errors.DeadlineExceeded):
            _load(channel, b"slow", timeout=0.2)
        servicer.hold.set()
        assert _load(channel, b"after").serial == b"after"
    finally:
        channel.close()


def test_a_pooled_connection_to_a_node_that_restarted_is_replaced(server: Any) -> None:
    serving, servicer = server
    port = serving.port
    channel = frames.FramesChannel(rpc.RpcConfig(cluster_name="t"), f"127.0.0.1:{port}")
    try:
        assert _load(channel, b"one").serial == b"one"  # leaves an idle connection in the pool
        serving.stop()
        again = frames.FramesServer(rpc.RpcConfig(cluster_name="t"), f"127.0.0.1:{port}", [(STORAGE, servicer)])
        again.start()
        try:
            assert _load(channel, b"two").serial == b"two"
        finally:
            again.stop()
    finally:
        channel.close()


def test_concurrent_callers_each_get_their_own_answer(server: Any) -> None:
    serving, _ = server
    channel = frames.FramesChannel(rpc.RpcConfig(cluster_name="t"), f"127.0.0.1:{serving.port}")
    wrong: list[tuple[bytes, bytes]] = []

    def caller(index: int) -> None:
        for call in range(50):
            oid = f"{index}-{call}".encode()
            answer = _load(channel, oid).serial
            if answer != oid:
                wrong.append((oid, answer))

    threads = [threading.Thread(target=caller, args=(index,)) for index in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not wrong
        assert channel.calls == 8 * 50
    finally:
        channel.close()


def test_a_frames_port_out_of_reach_falls_back_to_grpc(cluster: ThreadCluster) -> None:
    # Below the kernel's ephemeral range (free_port): no outgoing connection
    # or port-0 bind can take it meanwhile, so nothing listens there.
    closed_port = free_port()
    ZODB.DB(cluster.client()).close()  # the root exists (whichever test ran before)
    table = cluster.master.state.table
    node = next(n for n in cluster.storages if n.node_id in table.readable_nodes(0))  # holds the root
    channel = frames.FramesChannel(cluster.rpc, f"127.0.0.1:{closed_port}")  # nothing listens there
    grpc_stub = storage_pb2_grpc.StorageStub(rpc.make_channel(cluster.rpc, node.address))
    stub = frames.FramesStub(channel, grpc_stub, FRAMED_METHODS, "node 1")
    try:
        reply = rpc.call(stub.LoadBefore, storage_pb2.LoadBeforeRequest(oid=b"\0" * 8, before_tid=maxtid),
                         timeout=10, peer="node 1")
        assert reply.status == storage_pb2.LoadReply.FOUND  # the root, over gRPC
        assert channel.calls == 0
    finally:
        channel.close()


def test_a_request_beyond_the_message_limit_is_refused_before_it_is_sent(server: Any) -> None:
    serving, _ = server
    channel = frames.FramesChannel(rpc.RpcConfig(cluster_name="t", max_message_bytes=1000), f"127.0.0.1:{serving.port}")
    try:
        with pytest.raises(errors.TooLarge, match="exceeds the 1000-byte message limit"):
            _load(channel, b"x" * 2000)
        assert _load(channel, b"small").serial == b"small"
    finally:
        channel.close()


MASTER = master_pb2.DESCRIPTOR.services_by_name["Master"]


class _StreamingServicer(_Refusing):
    """Subscribe streams three start events, then ends, fails or
    waits (for the caller to hang up), as ``request.client_id`` says."""

    def __init__(self) -> None:
        self.closed = threading.Event()  # the generator's finally ran
        self.called_back = threading.Event()  # the context's callback ran

    def Subscribe(self, request: master_pb2.SubscribeRequest, context: Any) -> Iterator[master_pb2.ClientEvent]:
        context.add_callback(self.called_back.set)
        try:
            for tid in range(3):
                yield master_pb2.ClientEvent(start_tid=struct.pack("!Q", tid))
            if request.client_id == "fail":
                raise errors.NotLeader("not the leader now")
            while request.client_id == "wait":
                yield master_pb2.ClientEvent(heartbeat=True)
                time.sleep(0.01)
        finally:
            self.closed.set()


@pytest.fixture
def streaming() -> Iterator[tuple[frames.FramesChannel, _StreamingServicer]]:
    servicer = _StreamingServicer()
    config = rpc.RpcConfig(cluster_name="t")
    serving = frames.FramesServer(config, "127.0.0.1:0", [(MASTER, servicer)])
    serving.start()
    channel = frames.FramesChannel(config, f"127.0.0.1:{serving.port}")
    yield channel, servicer
    channel.close()
    serving.stop()


def _subscribe(channel: frames.FramesChannel, how: str) -> frames.FramesStream:
    return channel.stream("Subscribe", master_pb2.SubscribeRequest(client_id=how), master_pb2.ClientEvent, "m")


def test_a_server_stream_brings_every_message_then_ends(streaming: Any) -> None:
    channel, servicer = streaming
    events = list(_subscribe(channel, "end"))
    assert [event.start_tid for event in events] == [struct.pack("!Q", tid) for tid in range(3)]
    assert servicer.closed.wait(10) and servicer.called_back.wait(10)


def test_a_server_stream_that_fails_raises_its_error_after_what_it_sent(streaming: Any) -> None:
    channel, _ = streaming
    received = []
    with pytest.raises(errors.NotLeader, match="not the leader now"):
        for event in _subscribe(channel, "fail"):
            received.append(event)
    assert len(received) == 3


def test_a_cancelled_stream_ends_at_both_ends(streaming: Any) -> None:
    channel, servicer = streaming
    stream = _subscribe(channel, "wait")
    events = iter(stream)
    for _ in range(5):
        next(events)
    stream.cancel()
    with pytest.raises(errors.Unavailable, match="cancelled"):
        for _ in events:
            pass
    # The server notices at its next message: the method's generator is
    # closed and the callbacks it registered are called.
    assert servicer.closed.wait(10) and servicer.called_back.wait(10)
    # The server goes on serving.
    assert len(list(_subscribe(channel, "end"))) == 3


class _PumpedSource:
    """A pumped Subscribe: ``news`` start_tids queued by the test, sent on
    the next poll; the end once ``over``; ``closed`` once the pump closed it."""

    def __init__(self, request: master_pb2.SubscribeRequest, wake: Any) -> None:
        if request.client_id == "refused":
            raise errors.BadRequest("no such client")
        self.client_id = request.client_id
        self.wake = wake
        self.news: list[int] = []
        self.over = False
        self.closed = threading.Event()
        self.lock = threading.Lock()

    def poll(self, now: float) -> tuple[list[Any] | None, float]:
        with self.lock:
            news, self.news = self.news, []
            if self.over and not news:
                return None, now
            again = now if self.over else now + 60  # over: the end goes at the next poll
        return [master_pb2.ClientEvent(start_tid=struct.pack("!Q", tid)) for tid in news], again

    def close(self) -> None:
        self.closed.set()

    def tell(self, *tids: int, over: bool = False) -> None:
        with self.lock:
            self.news.extend(tids)
            self.over = over
        self.wake()


def _source(opened: list[_PumpedSource], client_id: str) -> _PumpedSource:
    """The source of ``client_id``'s stream (streams open in any order: a thread each)."""
    (source,) = [source for source in opened if source.client_id == client_id]
    return source


@pytest.fixture
def pumped() -> Iterator[tuple[frames.FramesServer, frames.FramesChannel, list[_PumpedSource]]]:
    opened: list[_PumpedSource] = []

    def open_source(request: master_pb2.SubscribeRequest, wake: Any) -> _PumpedSource:
        source = _PumpedSource(request, wake)
        opened.append(source)
        return source

    config = rpc.RpcConfig(cluster_name="t")
    serving = frames.FramesServer(config, "127.0.0.1:0", [(MASTER, _Refusing())], pumped={"Subscribe": open_source})
    serving.start()
    channel = frames.FramesChannel(config, f"127.0.0.1:{serving.port}")
    yield serving, channel, opened
    channel.close()
    serving.stop()


def test_pumped_streams_are_served_from_one_thread_and_hear_each_wake(pumped: Any) -> None:
    serving, channel, opened = pumped
    threads_before = threading.active_count()
    streams = [_subscribe(channel, f"client-{n}") for n in range(40)]
    events = [iter(stream) for stream in streams]
    wait_until(lambda: serving.pumped_streams == 40, "40 streams in the pump")
    # Their connections' threads ended: one pump thread serves them all.
    wait_until(lambda: threading.active_count() <= threads_before + 2, "the connection threads to end")
    for round_ in range(3):
        for source in opened:
            source.tell(round_)
        for received in events:
            assert next(received).start_tid == struct.pack("!Q", round_)
    for source in opened:
        source.tell(99, over=True)
    for received in events:
        assert [event.start_tid for event in received] == [struct.pack("!Q", 99)]  # then END
    assert all(source.closed.wait(10) for source in opened)
    wait_until(lambda: serving.pumped_streams == 0, "the streams to leave the pump")
    assert serving.served["Subscribe"] == 40


def test_a_pumped_stream_whose_caller_hangs_up_is_closed_and_the_others_go_on(pumped: Any) -> None:
    serving, channel, opened = pumped
    leaving, staying = _subscribe(channel, "leaving"), _subscribe(channel, "staying")
    staying_events = iter(staying)
    wait_until(lambda: len(opened) == 2 and serving.pumped_streams == 2, "both streams in the pump")
    leaving.cancel()
    assert _source(opened, "leaving").closed.wait(10), "the pump did not notice the caller hang up"
    _source(opened, "staying").tell(7)
    assert next(staying_events).start_tid == struct.pack("!Q", 7)
    assert not _source(opened, "staying").closed.is_set()


def test_a_pumped_stream_refused_at_opening_is_answered_with_its_error(pumped: Any) -> None:
    serving, channel, _ = pumped
    with pytest.raises(errors.BadRequest, match="no such client"):
        list(_subscribe(channel, "refused"))
    assert serving.pumped_streams == 0


def test_stopping_the_server_ends_its_pumped_streams(pumped: Any) -> None:
    serving, channel, opened = pumped
    events = iter(_subscribe(channel, "until-stop"))
    wait_until(lambda: serving.pumped_streams == 1, "the stream in the pump")
    opened[0].tell(1)
    assert next(events).start_tid == struct.pack("!Q", 1)
    serving.stop()
    assert opened[0].closed.wait(10)
    with pytest.raises(errors.Unavailable):
        next(events)


def test_a_reader_too_slow_for_the_pump_is_dropped(pumped: Any) -> None:
    serving, channel, opened = pumped
    stream = _subscribe(channel, "asleep")
    events = iter(stream)
    wait_until(lambda: serving.pumped_streams == 1, "the stream in the pump")
    opened[0].tell(0)
    assert next(events).start_tid == struct.pack("!Q", 0)  # then it reads no more
    serving._pump._max_buffered = 64 << 10  # noqa: SLF001 - reached with a few MB unread
    source = opened[0]
    for _ in range(4000):  # up to 60 MB: past what the sockets' buffers can hold
        source.tell(*range(1000))
        wait_until(lambda: not source.news or source.closed.is_set(), "the pump to take the news")
        if source.closed.is_set():
            break
    assert opened[0].closed.wait(30), "a reader that reads nothing kept its stream"
    stream.cancel()


def test_a_failing_source_ends_its_own_stream_and_a_failed_pump_is_replaced(pumped: Any) -> None:
    serving, channel, opened = pumped
    broken = _subscribe(channel, "broken")  # kept: a stream collected closes its connection
    fine = iter(_subscribe(channel, "fine"))
    wait_until(lambda: len(opened) == 2 and serving.pumped_streams == 2, "both streams in the pump")

    def fail(now: float) -> Any:
        raise RuntimeError("a source bug")

    failing, going_on = _source(opened, "broken"), _source(opened, "fine")
    failing.poll = fail  # type: ignore[method-assign]
    failing.wake()
    assert failing.closed.wait(10), "the failing source's stream was not ended"
    going_on.tell(5)
    assert next(fine).start_tid == struct.pack("!Q", 5)  # the other stream goes on
    failed_pump = serving._pump  # noqa: SLF001

    def pump_bug(stream: Any, now: float) -> None:
        raise RuntimeError("a pump bug")

    failed_pump._poll = pump_bug  # noqa: SLF001
    failed_pump.wake()
    assert going_on.closed.wait(10), "a failed pump left its streams open"
    again = iter(_subscribe(channel, "again"))  # a new stream: a new pump
    wait_until(lambda: len(opened) == 3 and serving.pumped_streams == 1, "the stream in a new pump")
    _source(opened, "again").tell(6)
    assert next(again).start_tid == struct.pack("!Q", 6)
    assert serving._pump is not failed_pump  # noqa: SLF001
    broken.cancel()


def test_a_connection_idle_past_the_park_time_gives_its_thread_back_until_its_next_call() -> None:
    servicer = _Servicer()
    config = rpc.RpcConfig(cluster_name="t")
    serving = frames.FramesServer(config, "127.0.0.1:0", [(STORAGE, servicer)], idle_park=0.05)
    serving.start()
    channels = [frames.FramesChannel(config, f"127.0.0.1:{serving.port}") for _ in range(20)]
    try:
        threads_before = threading.active_count()
        for round_ in range(3):
            for n, channel in enumerate(channels):  # each on its pooled connection
                oid = b"round %d caller %d" % (round_, n)
                assert _load(channel, oid).serial == oid
            wait_until(lambda: serving.parked_connections == 20, "every connection parked")
            # One watcher thread for them all, not one each.
            wait_until(lambda: threading.active_count() <= threads_before + 1, "the connections' threads to end")
        assert all(len(channel._idle) == 1 for channel in channels)  # noqa: SLF001 - the same connections
        channels[0].close()  # a parked connection whose caller hangs up is closed and forgotten
        wait_until(lambda: serving.parked_connections == 19, "the closed connection to leave the watcher")
    finally:
        for channel in channels:
            channel.close()
        serving.stop()

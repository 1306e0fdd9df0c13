"""The network under the masters' Raft: one sender thread per peer, one servicer.

Sending (:class:`RaftTransport`): the driver hands over the messages of a
``Ready`` and returns at once; each peer has its own queue and thread, which
takes everything queued for that peer and sends it in ONE ``Raft.Step`` rpc
(``proto/raft.proto``), in order.  The answer carries the peer's messages
back (its answers to these, once persisted): they go to the driver's inbox
like any received message, so that a round trip (an append and its
answer) costs one rpc, not two.  A slow or dead peer delays only its own
queue, never the driver's loop nor the other peers.  Once a peer has
answered, the sender asks it (``GetClusterInfo``) for its frames address
and sends the Steps as frames (:mod:`neostore.frames`) from then on, over
gRPC again while the frames port cannot be reached (asked again every
``FRAMES_ASK_AGAIN`` seconds: a restarted peer may serve them on another
port).  A failed send is
reported to the driver (``report_unreachable``: the core then probes that
follower instead of pipelining) and the messages are dropped — Raft
tolerates lost messages, the leader resends what a follower lacks.  A
queue that grows beyond ``max_queued`` (a peer down for long) drops its
oldest messages for the same reason.

Receiving (:class:`RaftServicer`): decode each message with the core's own
codec, hand the batch to the driver, and answer with the messages the
driver produced for the sender while handling it (:class:`ReplyBox`; none
if that takes longer than ``REPLY_WAIT``: they are then sent in a Step of
their own).  The cluster-name check is the one every neostore server
applies (:mod:`neostore.rpc`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from neostore import errors, frames, rpc
from neostore.protocol import common_pb2, master_pb2_grpc, raft_pb2, raft_pb2_grpc
from neostore.raft import DecodeError, Message, decode_message, encode_message

log = logging.getLogger(__name__)

DEFAULT_SEND_TIMEOUT = 2.0
DEFAULT_MAX_QUEUED = 4096
RECONNECT_BACKOFF = 0.5
#: How long a Step waits for the driver's answer messages (below the
#: sender's timeout: an answer that misses it is sent on its own).
REPLY_WAIT = 1.0
#: Seconds between two questions to a peer about its frames address, while
#: it has none or its frames port cannot be reached.
FRAMES_ASK_AGAIN = 30.0
_FRAMED_STEP = frames.reply_classes(raft_pb2.DESCRIPTOR.services_by_name["Raft"], ("Step",))


class ReplyBox:
    """The messages a driver produces for ``peer_id`` while handling a Step
    from it: the Step answers with them.  Once closed (the driver is done,
    or the Step gave up waiting), :meth:`offer` refuses: the driver sends
    on its own."""

    def __init__(self, peer_id: int, answer: Callable[[list[Message]], None] | None = None) -> None:
        self.peer_id = peer_id
        self._lock = threading.Lock()
        self._messages: list[Message] = []
        self._closed = False
        self._done = threading.Event()
        # Closed by the thread that made it (the Step's, running the round):
        # answer at once (``reply_now``), before the round goes on applying.
        self._answer = answer
        self._owner = threading.get_ident()

    def offer(self, message: Message) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._messages.append(message)
            return True

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            messages = list(self._messages)
        self._done.set()
        if self._answer is not None and threading.get_ident() == self._owner:
            self._answer(messages)

    def take(self, timeout: float) -> list[Message]:
        """Wait (at most ``timeout``) until closed; the messages offered."""
        self._done.wait(timeout)
        with self._lock:
            self._closed = True
            return list(self._messages)


class _PeerSender:
    """The queue and thread that send one peer its messages."""

    def __init__(self, peer_id: int, address: str, config: rpc.RpcConfig, receive: Callable[[list[Message]], None],
                 unreachable: Callable[[int], None], timeout: float, max_queued: int) -> None:
        self.peer_id = peer_id
        self.address = address
        self._receive = receive
        self._unreachable = unreachable
        self._timeout = timeout
        self._max_queued = max_queued
        # A peer back from a crash must hear from the leader within an election timeout or so.
        self._config = config
        self._channel = rpc.make_channel(config, address, max_reconnect_backoff=RECONNECT_BACKOFF)
        self._stub = raft_pb2_grpc.RaftStub(self._channel)
        self._framed: frames.FramesStub | None = None
        self._ask_frames_at = 0.0
        self._queue: collections.deque[bytes] = collections.deque()
        self._condition = threading.Condition()
        self._closed = False
        self._failing = False
        self.last_success = 0.0  # time.monotonic() of the last delivered batch
        self._thread = threading.Thread(target=self._run, name=f"raft-send-{peer_id}", daemon=True)
        self._thread.start()

    def enqueue(self, messages: Sequence[Message]) -> None:
        with self._condition:
            if self._closed:
                return
            self._queue.extend(encode_message(message) for message in messages)
            while len(self._queue) > self._max_queued:
                self._queue.popleft()
            self._condition.notify()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._queue and not self._closed:
                    self._condition.wait()
                if self._closed:
                    return
                batch = list(self._queue)
                self._queue.clear()
            try:
                reply = rpc.call(self._step_stub().Step, raft_pb2.RaftMessages(messages=batch),
                                 timeout=self._timeout, peer=self.address)
                answers = [decode_message(data) for data in reply.messages]
            except DecodeError as error:
                log.warning("raft: undecodable answer from peer %d at %s: %s", self.peer_id, self.address, error)
            except errors.NeoError as error:
                if not self._failing:
                    log.info("raft: peer %d at %s unreachable: %s", self.peer_id, self.address, error)
                self._failing = True
                self._unreachable(self.peer_id)
            else:
                self.last_success = time.monotonic()
                if self._failing:
                    log.info("raft: peer %d at %s reachable again", self.peer_id, self.address)
                self._failing = False
                if answers:
                    self._receive(answers)

    def _step_stub(self) -> Any:
        """The stub to send with: frames once the peer named its frames
        address (and while they can be reached), else gRPC."""
        framed = self._framed
        if framed is not None and framed.channel.reachable:
            return framed
        now = time.monotonic()
        if not self.last_success or now < self._ask_frames_at:
            return self._stub  # never heard from it yet, or asked lately
        self._ask_frames_at = now + FRAMES_ASK_AGAIN
        try:
            info = rpc.call(master_pb2_grpc.MasterStub(self._channel).GetClusterInfo, common_pb2.Empty(),
                            timeout=min(1.0, self._timeout), peer=self.address)
        except errors.NeoError:
            return framed or self._stub
        if framed is not None and framed.channel.address == info.frames_address:
            return framed  # the same port: FramesStub itself tries it again, falling back to gRPC meanwhile
        if framed is not None:
            framed.channel.close()
        self._framed = None
        if info.frames_address:
            self._framed = frames.FramesStub(frames.FramesChannel(self._config, info.frames_address), self._stub,
                                             _FRAMED_STEP, f"master {self.address}")
        return self._framed or self._stub

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._thread.join(self._timeout + 1.0)
        self._channel.close()
        if self._framed is not None:
            self._framed.channel.close()


class RaftTransport:
    """Sends the core's messages to the peers named in ``addresses`` (node id → host:port).

    Peers come and go with the membership (:meth:`add_peer`, :meth:`remove_peer`,
    called by the driver's thread as it applies membership changes).
    """

    def __init__(
        self,
        config: rpc.RpcConfig,
        addresses: dict[int, str],
        receive: Callable[[list[Message]], None],
        unreachable: Callable[[int], None],
        timeout: float = DEFAULT_SEND_TIMEOUT,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        self._config = config
        self._receive = receive
        self._unreachable = unreachable
        self._timeout = timeout
        self._max_queued = max_queued
        self._senders = {peer_id: self._sender(peer_id, address) for peer_id, address in addresses.items()}

    def _sender(self, peer_id: int, address: str) -> _PeerSender:
        return _PeerSender(peer_id, address, self._config, self._receive, self._unreachable,
                           self._timeout, self._max_queued)

    def add_peer(self, peer_id: int, address: str) -> None:
        """Start sending to ``peer_id`` at ``address`` (replacing an older address)."""
        old = self._senders.get(peer_id)
        if old is not None and old.address == address:
            return
        self._senders[peer_id] = self._sender(peer_id, address)
        if old is not None:
            threading.Thread(target=old.close, daemon=True).start()

    def remove_peer(self, peer_id: int) -> None:
        """Stop sending to ``peer_id`` (its queue is dropped; closing does not block the caller)."""
        sender = self._senders.pop(peer_id, None)
        if sender is not None:
            threading.Thread(target=sender.close, name=f"raft-close-{peer_id}", daemon=True).start()

    def answered_within(self, peer_id: int, seconds: float) -> bool:
        """Whether a batch reached ``peer_id`` in the last ``seconds``."""
        sender = self._senders.get(peer_id)
        return sender is not None and time.monotonic() - sender.last_success <= seconds

    def send(self, messages: Sequence[Message]) -> None:
        """Queue ``messages`` for their targets; never blocks on the network."""
        by_target: dict[int, list[Message]] = {}
        for message in messages:
            by_target.setdefault(message.target, []).append(message)
        for target, batch in by_target.items():
            sender = self._senders.get(target)
            if sender is None:
                log.warning("raft: no address for node %d: %d messages dropped", target, len(batch))
                continue
            sender.enqueue(batch)

    def close(self) -> None:
        for sender in list(self._senders.values()):
            sender.close()


class RaftServicer(raft_pb2_grpc.RaftServicer):
    """service Raft (raft.proto): other masters' messages, into the driver.

    ``receive(messages)`` hands them over and returns the driver's answers
    to the sender (or None: they will be sent on their own).
    """

    def __init__(self, receive: Callable[..., list[Message] | None]) -> None:
        self._receive = receive

    def Step(self, request: raft_pb2.RaftMessages, context: grpc.ServicerContext) -> raft_pb2.RaftMessages:
        try:
            messages = [decode_message(data) for data in request.messages]
        except DecodeError as error:
            raise errors.BadRequest(f"undecodable raft message: {error}") from None
        reply_now = getattr(context, "reply_now", None)  # frames: answer once persisted, then apply
        if reply_now is None:
            answers = self._receive(messages) or []
        else:
            answers = self._receive(messages, lambda answers: reply_now(_encode(answers))) or []
        return _encode(answers)


def _encode(messages: list[Message]) -> raft_pb2.RaftMessages:
    return raft_pb2.RaftMessages(messages=[encode_message(message) for message in messages])

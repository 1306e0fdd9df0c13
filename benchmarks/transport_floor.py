"""The per-call floor of each way two processes can exchange a request and its answer.

    python benchmarks/transport_floor.py [--calls 3000] [--payload 200] [--json] [--quick]

What a neostore commit or load costs is mostly what its calls cost (see the
commit-path figures in docs/design.md): this measures the floor under every
call, with a handler that does nothing but answer its request, on this
machine, one shape after the other:

* ``grpc-unary``: a unary call to a synchronous ``grpc.server`` (a thread
  pool), as every neostore RPC is today;
* ``grpc-stream``: one request and its answer on an open bidirectional
  stream (the shape the Raft transport or Commit orders could take);
* ``framed-socket``: a length-prefixed frame on a plain TCP connection
  (``TCP_NODELAY``), read and answered by a thread per connection: no
  HTTP/2, no completion queue, no hand-off to a pool.

Each server is its own process; the client calls it ``--calls`` times in
a row (after a warm-up), one call at a time.  Printed per shape: the
round trip p50 and p99, and the CPU per call of the server process and of
the client process (user+sys over the measured calls, from /proc and
``time.process_time``).  A benchmark, not a test: compare the rows of one
run.  Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

from neostore.launcher import free_port  # a port below the ephemeral range: nothing takes it meanwhile

SHAPES = ("grpc-unary", "grpc-stream", "framed-socket")
_SERVICE = "neostore.bench.Floor"
_FRAME = struct.Struct("!I")


# -- servers (each run as its own process: python transport_floor.py --serve SHAPE PORT) --------


def _serve_grpc(port: int) -> None:
    def echo(request: bytes, context: Any) -> bytes:
        return request

    def echo_stream(requests: Any, context: Any) -> Any:
        yield from requests

    handler = grpc.method_handlers_generic_handler(_SERVICE, {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "EchoStream": grpc.stream_stream_rpc_method_handler(echo_stream),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def _receive(connection: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)


def _serve_framed(port: int) -> None:
    def answer(connection: socket.socket) -> None:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with connection:
            try:
                while True:
                    (size,) = _FRAME.unpack(_receive(connection, _FRAME.size))
                    request = _receive(connection, size)
                    connection.sendall(_FRAME.pack(len(request)) + request)
            except (EOFError, OSError):
                return

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=answer, args=(connection,), daemon=True).start()


# -- clients ---------------------------------------------------------------------------------------


def _grpc_unary(port: int) -> tuple[Callable[[bytes], bytes], Callable[[], None]]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=30)
    method = channel.unary_unary(f"/{_SERVICE}/Echo")
    return (lambda payload: method(payload, timeout=10)), channel.close


def _grpc_stream(port: int) -> tuple[Callable[[bytes], bytes], Callable[[], None]]:
    import queue

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=30)
    outgoing: queue.Queue[bytes | None] = queue.Queue()
    answers = channel.stream_stream(f"/{_SERVICE}/EchoStream")(iter(outgoing.get, None))

    def call(payload: bytes) -> bytes:
        outgoing.put(payload)
        return next(answers)

    def close() -> None:
        outgoing.put(None)
        channel.close()

    return call, close


def _framed(port: int) -> tuple[Callable[[bytes], bytes], Callable[[], None]]:
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def call(payload: bytes) -> bytes:
        connection.sendall(_FRAME.pack(len(payload)) + payload)
        (size,) = _FRAME.unpack(_receive(connection, _FRAME.size))
        return _receive(connection, size)

    return call, connection.close


_CLIENTS = {"grpc-unary": _grpc_unary, "grpc-stream": _grpc_stream, "framed-socket": _framed}


def _process_cpu(pid: int) -> float:
    """User+sys seconds of process ``pid`` (every thread)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_listening(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the benchmark server on port {port} did not start") from None
            time.sleep(0.05)


def measure(shape: str, calls: int, payload_size: int) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", shape, str(port)])
    try:
        _wait_listening(port, server)
        call, close = _CLIENTS[shape](port)
        payload = os.urandom(payload_size)
        try:
            for _ in range(min(500, calls)):
                assert call(payload) == payload
            times = []
            server_before, client_before = _process_cpu(server.pid), time.process_time()
            for _ in range(calls):
                started = time.perf_counter()
                call(payload)
                times.append(time.perf_counter() - started)
            server_cpu = _process_cpu(server.pid) - server_before
            client_cpu = time.process_time() - client_before
        finally:
            close()
    finally:
        server.kill()
        server.wait()
    times.sort()
    return {
        "calls": calls,
        "round_trip_p50_us": times[len(times) // 2] * 1e6,
        "round_trip_p99_us": times[min(len(times) - 1, int(len(times) * 0.99))] * 1e6,
        "server_cpu_us_per_call": server_cpu / calls * 1e6,
        "client_cpu_us_per_call": client_cpu / calls * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="measured calls per shape (%(default)s)")
    parser.add_argument("--payload", type=int, default=200, help="request and answer bytes (%(default)s)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--quick", action="store_true", help="300 calls per shape (a smoke run)")
    parser.add_argument("--serve", nargs=2, metavar=("SHAPE", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        shape, port = args.serve[0], int(args.serve[1])
        (_serve_framed if shape == "framed-socket" else _serve_grpc)(port)
        return 0
    calls = 300 if args.quick else args.calls
    results = {shape: measure(shape, calls, args.payload) for shape in SHAPES}
    if args.json:
        print(json.dumps({"payload_bytes": args.payload, "grpcio": grpc.__version__, "shapes": results}, indent=2))
        return 0
    print(f"{calls} calls per shape, {args.payload}-byte request and answer, grpcio {grpc.__version__}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'shape':<15}{'round trip p50/p99 us':>24}{'server CPU us/call':>20}{'client CPU us/call':>20}")
    for shape, figures in results.items():
        print(f"{shape:<15}{figures['round_trip_p50_us']:>12.0f} /{figures['round_trip_p99_us']:>9.0f}"
              f"{figures['server_cpu_us_per_call']:>20.0f}{figures['client_cpu_us_per_call']:>20.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

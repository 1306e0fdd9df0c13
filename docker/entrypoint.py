#!/usr/bin/env python3
"""``neostore-docker``: the entry point of the neostore image.

    neostore-docker master            # neo-master, configured from NEOSTORE_* variables
    neostore-docker storage           # neo-storage, the same
    neostore-docker neoctl ARGS...    # neoctl against NEOSTORE_MASTERS / NEOSTORE_CLUSTER
    neostore-docker demo              # examples/demo.py: a ZODB program on the cluster
    neostore-docker health            # grpc.health.v1 check of this container's node
    neostore-docker pause             # sleep until stopped (holds a shared network namespace)
    neostore-docker COMMAND ARGS...   # any other command, as is (sh, python, neo-master --help...)

Extra arguments after ``master`` or ``storage`` are passed on to the node
(they win over the variables).  The variables (all optional but the
cluster's masters for a storage node):

    NEOSTORE_CLUSTER     cluster name (image default: neostore)
    NEOSTORE_MASTERS     every master's host:port, comma-separated, in the same order everywhere
    NEOSTORE_NODE_ID     master: its position in NEOSTORE_MASTERS, from 1
    NEOSTORE_DATA        data directory (image default: /data, the volume)
    NEOSTORE_BIND        host:port to listen on (master: 0.0.0.0 and the port of its own
                         NEOSTORE_MASTERS entry; storage: 0.0.0.0:5552)
    NEOSTORE_ADVERTISE   storage: host:port the masters, peers and clients reach it at
    NEOSTORE_LABEL       storage: failure domain label
    NEOSTORE_PARTITIONS, NEOSTORE_REPLICAS, NEOSTORE_AUTOSTART   master: when creating the cluster
    NEOSTORE_LOG_LEVEL   DEBUG, INFO (default), WARNING, ERROR
    NEOSTORE_METRICS     host:port to serve Prometheus metrics on (master, storage; none by default)
    NEOSTORE_CA, NEOSTORE_CERT, NEOSTORE_KEY   mutual TLS (PEM files, e.g. a mounted secret)

They can also come from a file of ``NEOSTORE_X=value`` lines (``#`` starts a
comment): ``$NEOSTORE_CONFIG``, by default ``/etc/neostore/neostore.env``
when it exists; a variable set in the environment wins over the file.

``health`` reads this container's node address from the ``--bind`` option
of process 1 (the node, once this entry point exec'ed it) or from
``NEOSTORE_HEALTH_ADDRESS``, asks it ``grpc.health.v1.Health/Check`` and
exits 0 when it answers SERVING, 1 otherwise; a container that runs no
node (neoctl, pause) is healthy.
"""

from __future__ import annotations

import os
import signal
import sys

CONFIG_FILE = "/etc/neostore/neostore.env"
WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")

USAGE = __doc__.split("\n\n", 2)[1]


def load_config(environ: dict[str, str]) -> dict[str, str]:
    """The NEOSTORE_* settings: the config file's, overridden by the environment's."""
    settings: dict[str, str] = {}
    path = environ.get("NEOSTORE_CONFIG", CONFIG_FILE)
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                key, sep, value = line.partition("=")
                key = key.strip().removeprefix("export ").strip()
                if not sep or not key.startswith("NEOSTORE_"):
                    raise SystemExit(f"neostore-docker: {path}:{number}: expected NEOSTORE_NAME=value")
                settings[key] = value.strip().strip("'\"")
    settings.update({key: value for key, value in environ.items() if key.startswith("NEOSTORE_")})
    return settings


def _masters(settings: dict[str, str]) -> list[str]:
    return [address.strip() for address in settings.get("NEOSTORE_MASTERS", "").split(",") if address.strip()]


def _options(settings: dict[str, str], names: dict[str, str]) -> list[str]:
    arguments = []
    for variable, option in names.items():
        value = settings.get(variable, "")
        if value:
            arguments += [option, value]
    return arguments


TLS_OPTIONS = {"NEOSTORE_CA": "--ca", "NEOSTORE_CERT": "--cert", "NEOSTORE_KEY": "--key"}


def master_command(settings: dict[str, str], extra: list[str]) -> list[str]:
    masters = _masters(settings)
    bind = settings.get("NEOSTORE_BIND", "")
    node_id = settings.get("NEOSTORE_NODE_ID", "")
    if not bind:
        if len(masters) > 1 and node_id.isdigit() and 1 <= int(node_id) <= len(masters):
            bind = "0.0.0.0:" + masters[int(node_id) - 1].rsplit(":", 1)[1]
        elif len(masters) == 1:
            bind = "0.0.0.0:" + masters[0].rsplit(":", 1)[1]
        else:
            bind = "0.0.0.0:5551"
    command = ["neo-master", "--cluster", settings.get("NEOSTORE_CLUSTER", "neostore"),
               "--data", settings.get("NEOSTORE_DATA", "/data"), "--bind", bind]
    if len(masters) > 1:
        command += ["--masters", ",".join(masters)]
    command += _options(settings, {
        "NEOSTORE_NODE_ID": "--node-id", "NEOSTORE_PARTITIONS": "--partitions",
        "NEOSTORE_REPLICAS": "--replicas", "NEOSTORE_AUTOSTART": "--autostart",
        "NEOSTORE_LOG_LEVEL": "--log-level", "NEOSTORE_METRICS": "--metrics",
        "NEOSTORE_FRAMES_PORT": "--frames-port", **TLS_OPTIONS})
    return command + extra


def storage_command(settings: dict[str, str], extra: list[str]) -> list[str]:
    masters = _masters(settings)
    if not masters and "--masters" not in extra:
        raise SystemExit("neostore-docker: a storage node needs NEOSTORE_MASTERS (host:port,...)")
    command = ["neo-storage", "--cluster", settings.get("NEOSTORE_CLUSTER", "neostore"),
               "--data", settings.get("NEOSTORE_DATA", "/data"),
               "--bind", settings.get("NEOSTORE_BIND", "") or "0.0.0.0:5552"]
    if masters:
        command += ["--masters", ",".join(masters)]
    command += _options(settings, {
        "NEOSTORE_ADVERTISE": "--advertise", "NEOSTORE_LABEL": "--label", "NEOSTORE_FRAMES_PORT": "--frames-port",
        "NEOSTORE_LOG_LEVEL": "--log-level", "NEOSTORE_METRICS": "--metrics", **TLS_OPTIONS})
    return command + extra


def neoctl_command(settings: dict[str, str], extra: list[str]) -> list[str]:
    command = ["neoctl"]
    if settings.get("NEOSTORE_MASTERS"):
        command += ["--masters", settings["NEOSTORE_MASTERS"]]
    command += ["--cluster", settings.get("NEOSTORE_CLUSTER", "neostore")]
    command += _options(settings, TLS_OPTIONS)
    return command + extra


def _bind_of_process_one() -> str:
    try:
        with open("/proc/1/cmdline", "rb") as file:
            arguments = file.read().decode(errors="replace").split("\0")
    except OSError:
        return ""
    for index, argument in enumerate(arguments):
        if argument == "--bind" and index + 1 < len(arguments):
            return arguments[index + 1]
        if argument.startswith("--bind="):
            return argument.split("=", 1)[1]
    return ""


def health(settings: dict[str, str]) -> int:
    address = settings.get("NEOSTORE_HEALTH_ADDRESS", "") or _bind_of_process_one()
    if not address:
        print("healthy: no node in this container")
        return 0
    host, _, port = address.rpartition(":")
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    target = f"{host}:{port}"

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if settings.get("NEOSTORE_CA"):
        with open(settings["NEOSTORE_CA"], "rb") as ca, open(settings["NEOSTORE_CERT"], "rb") as cert, \
                open(settings["NEOSTORE_KEY"], "rb") as key:
            credentials = grpc.ssl_channel_credentials(ca.read(), key.read(), cert.read())
        channel = grpc.secure_channel(target, credentials)
    else:
        channel = grpc.insecure_channel(target)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=float(settings.get("NEOSTORE_HEALTH_TIMEOUT", "4")))
    except grpc.RpcError as error:
        print(f"unhealthy: {target}: {error.code().name}: {error.details()}")
        return 1
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def pause() -> int:
    stop = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    signal.sigwait(stop)
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("help", "-h", "--help"):
        print(USAGE)
        return 0
    role, extra = argv[0], argv[1:]
    settings = load_config(dict(os.environ))
    if role == "health":
        return health(settings)
    if role == "pause":
        return pause()
    if role == "master":
        command = master_command(settings, extra)
    elif role == "storage":
        command = storage_command(settings, extra)
    elif role == "neoctl":
        command = neoctl_command(settings, extra)
    elif role == "demo":
        os.environ.setdefault("NEOSTORE_MASTERS", settings.get("NEOSTORE_MASTERS", "127.0.0.1:5551"))
        os.environ.setdefault("NEOSTORE_CLUSTER", settings.get("NEOSTORE_CLUSTER", "neostore"))
        command = [sys.executable, os.path.join(sys.prefix, "examples", "demo.py"), *extra]
    else:
        command = argv
    if role in ("master", "storage"):
        print("neostore-docker: " + " ".join(command), file=sys.stderr, flush=True)
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

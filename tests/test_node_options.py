"""neo-master / neo-storage options: a TOML config file, log files, JSON logs, repeated warnings,
a stop that cannot hang."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from neostore.master_node import main as master_main
from neostore.node_options import JsonFormatter, RepeatFilter, setup_logging
from neostore.storage_node import main as storage_main


def write(path: pathlib.Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_a_master_from_a_config_file_equals_one_from_the_same_flags(tmp_path: pathlib.Path) -> None:
    config = write(tmp_path / "master.toml", """
cluster = "prod"
data = "/var/lib/neostore/master"
bind = "10.0.0.1:5551"
masters = ["10.0.0.1:5551", "10.0.0.2:5551", "10.0.0.3:5551"]
node-id = 2
partitions = 24
replicas = 3
autostart = 4
metrics = "0.0.0.0:9151"
log_level = "WARNING"
""")
    from_file = master_main.parse_args(["--config", config])
    from_flags = master_main.parse_args([
        "--cluster", "prod", "--data", "/var/lib/neostore/master", "--bind", "10.0.0.1:5551",
        "--masters", "10.0.0.1:5551,10.0.0.2:5551,10.0.0.3:5551", "--node-id", "2", "--partitions", "24",
        "--replicas", "3", "--autostart", "4", "--metrics", "0.0.0.0:9151", "--log-level", "WARNING"])
    assert master_main.master_config(from_file) == master_main.master_config(from_flags)
    assert from_file.log_level == "WARNING" and from_file.node_id == 2 and from_file.partitions == 24


def test_a_storage_node_from_a_config_file_equals_one_from_the_same_flags(tmp_path: pathlib.Path) -> None:
    config = write(tmp_path / "storage.toml", """
cluster = "prod"
masters = "10.0.0.1:5551,10.0.0.2:5551"
data = "/var/lib/neostore/storage"
bind = "0.0.0.0:5552"
advertise = "10.0.0.7"
label = "rack-1"
map-size = 1073741824
register-timeout = 30.5
""")
    from_file = storage_main.parse_args(["--config", config])
    from_flags = storage_main.parse_args([
        "--cluster", "prod", "--masters", "10.0.0.1:5551,10.0.0.2:5551", "--data", "/var/lib/neostore/storage",
        "--bind", "0.0.0.0:5552", "--advertise", "10.0.0.7", "--label", "rack-1", "--map-size", "1073741824",
        "--register-timeout", "30.5"])
    assert storage_main.storage_config(from_file) == storage_main.storage_config(from_flags)


def test_the_command_line_wins_over_the_config_file(tmp_path: pathlib.Path) -> None:
    config = write(tmp_path / "master.toml", 'cluster = "from-file"\ndata = "/d"\npartitions = 6\n')
    args = master_main.parse_args(["--config", config, "--partitions", "8", "--cluster", "from-flag"])
    assert (args.cluster, args.partitions, args.data) == ("from-flag", 8, "/d")


@pytest.mark.parametrize("text, message", [
    ('cluster = "c"\ndata = "/d"\nparitions = 6\n', "unknown key 'paritions'"),
    ('cluster = "c"\ndata = "/d"\npartitions = "many"\n', "invalid value for partitions: 'many'"),
    ('cluster = "c"\ndata = "/d"\njoin = "yes"\n', "join must be true or false"),
    ('cluster = "c"\ndata = "/d"\nlog-level = "LOUD"\n', "log-level must be one of"),
    ('cluster = "c"\ndata = \n', "is not valid TOML"),
    ('data = "/d"\n', "--cluster required (on the command line or in --config)"),
])
def test_a_wrong_config_file_is_refused_naming_what_is_wrong(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], text: str, message: str) -> None:
    config = write(tmp_path / "bad.toml", text)
    with pytest.raises(SystemExit) as stopped:
        master_main.parse_args(["--config", config])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_a_missing_config_file_is_refused(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        storage_main.parse_args(["--config", str(tmp_path / "none.toml")])
    assert f"cannot read config file {tmp_path / 'none.toml'}" in capsys.readouterr().err


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored after the test (setup_logging replaces its handlers)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    usr2 = signal.getsignal(signal.SIGUSR2)
    try:
        yield root
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        signal.signal(signal.SIGUSR2, usr2)


def test_a_log_file_is_reopened_after_logrotate_moves_it_and_on_sigusr2(
        tmp_path: pathlib.Path, root_logger: logging.Logger) -> None:
    path = tmp_path / "node.log"
    args = master_main.parse_args(["--cluster", "c", "--data", "/d", "--log-file", str(path), "--log-format", "json"])
    setup_logging(args)
    log = logging.getLogger("neostore.test")
    log.info("first %d", 1)
    os.rename(path, tmp_path / "node.log.1")  # logrotate (create mode)
    log.info("second")
    rotated = [json.loads(line) for line in (tmp_path / "node.log.1").read_text().splitlines()]
    assert [entry["message"] for entry in rotated] == ["first 1"]
    assert rotated[0]["level"] == "INFO" and rotated[0]["logger"] == "neostore.test" and "time" in rotated[0]
    assert [json.loads(line)["message"] for line in path.read_text().splitlines()] == ["second"]
    # SIGUSR2 (as ZEO): the file is opened again by name, e.g. after a copy elsewhere.
    os.rename(path, tmp_path / "node.log.2")
    os.kill(os.getpid(), signal.SIGUSR2)
    log.warning("third")
    assert [json.loads(line)["message"] for line in path.read_text().splitlines()] == ["third"]


def test_a_json_record_carries_its_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed: %s", ("here",), sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "failed: here"
    assert "ValueError: boom" in entry["exception"]


def test_a_repeated_warning_is_written_once_a_minute_with_the_count_left_out() -> None:
    now = [1000.0]
    repeat = RepeatFilter(interval=60.0, clock=lambda: now[0])

    def record(message: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord("neostore.client", level, __file__, 1, message, args, None)

    template = "invalidation stream from master %s broke: %s"
    assert repeat.filter(record(template, "a", "x"))
    assert [repeat.filter(record(template, "b", "y")) for _ in range(5)] == [False] * 5
    assert repeat.filter(record("another warning"))  # its own template
    assert repeat.filter(record("debug detail", level=logging.INFO))
    assert repeat.filter(record("debug detail", level=logging.INFO))  # below WARNING: all of them
    now[0] += 61.0
    again = record(template, "c", "z")
    assert repeat.filter(again)
    assert again.getMessage() == ("invalidation stream from master c broke: z "
                                  "(5 more like this in the last 60s not logged)")


def test_a_master_process_from_a_config_file_logs_json_into_its_file(tmp_path: pathlib.Path) -> None:
    log_file = tmp_path / "master.log"
    config = write(tmp_path / "master.toml", f"""
cluster = "configured"
data = "{tmp_path / 'data'}"
partitions = 3
log-file = "{log_file}"
log-format = "json"
""")
    process = subprocess.Popen([sys.executable, "-m", "neostore.master_node.main", "--config", config],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("neo-master ready address=")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert any("cluster 'configured'" in entry["message"] for entry in entries), entries
    assert process.stderr is not None and process.stderr.read() == ""


def test_a_stop_that_hangs_ends_the_process_with_every_thread_stack() -> None:
    """A node told to stop must go away even if its orderly stop hangs."""
    hung = textwrap.dedent("""
        import threading, time
        from neostore.node_options import exit_if_stop_hangs
        threading.Thread(target=time.sleep, args=(3600,), name="stuck-helper", daemon=True).start()
        exit_if_stop_hangs(0.5)
        threading.Event().wait()  # the orderly stop, hung
    """)
    result = subprocess.run([sys.executable, "-c", hung], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Timeout (0:00:00.500000)!" in result.stderr
    assert result.stderr.count("Thread 0x") >= 2  # every thread, the stuck one too

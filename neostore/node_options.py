"""What ``neo-master`` and ``neo-storage`` share: a config file, logging,
a stop that cannot hang.

**Config file** (``--config FILE``, TOML): one key per command-line flag,
named like the flag without its dashes (``log-level`` or ``log_level``);
lists (``masters = ["10.0.0.1:5551", "10.0.0.2:5551"]``) are accepted
where the flag takes a comma-separated list.  Flags given on the command
line win over the file.  An unknown key, or a value of the wrong type, is
an error naming the file and the key.

**Logging**: ``--log-level``; ``--log-file PATH`` (appended to; reopened
when logrotate moves it away, and on SIGUSR2 as ZEO does), else stderr;
``--log-format text|json`` (JSON: one object per line with ``time``,
``level``, ``logger``, ``message`` and ``exception``).  A warning that
repeats (same logger and message template) is written at most once a
minute, the next one saying how many were left out.

**Stopping** (SIGTERM, SIGINT, the parent's death): the node stops in
order, and :func:`exit_if_stop_hangs` makes sure the process ends anyway
if that takes more than ``STOP_TIMEOUT`` seconds: every thread's stack is
written to stderr (what hung, for the bug report) and the process exits
with code 1.  A node that does not go away when told is worse than one
that stops abruptly: nothing it committed depends on an orderly stop.
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import json
import logging
import logging.handlers
import signal
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from typing import Any

from neostore.throttle import Throttle

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: A repeated warning is written at most this often (seconds).
REPEAT_INTERVAL = 60.0
#: The longest an orderly stop may take before the process exits anyway.
STOP_TIMEOUT = 30.0


def exit_if_stop_hangs(timeout: float = STOP_TIMEOUT) -> None:
    """Call as an orderly stop begins: if the process is still running
    ``timeout`` seconds later, write every thread's stack to stderr and exit
    (code 1).  See the module docstring."""
    faulthandler.dump_traceback_later(timeout, exit=True)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and the logging options."""
    parser.add_argument("--config", metavar="FILE",
                        help="TOML file of settings, one key per option (the options given here win)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                        help="(default %(default)s)")
    parser.add_argument("--log-file", default="", metavar="PATH",
                        help="log to PATH (reopened after logrotate moves it, and on SIGUSR2) instead of stderr")
    parser.add_argument("--log-format", default="text", choices=["text", "json"],
                        help="text lines, or one JSON object per line (default %(default)s)")


def parse_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                    required: Sequence[str] = ()) -> argparse.Namespace:
    """Parse ``argv`` over the defaults of ``--config``'s file, if any; the
    options in ``required`` must come from one or the other."""
    argv = list(sys.argv[1:] if argv is None else argv)
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--config")
    known, _ = first.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**_file_defaults(parser, known.config))
    arguments = parser.parse_args(argv)
    missing = [f"--{name.replace('_', '-')}" for name in required if not getattr(arguments, name)]
    if missing:
        parser.error(f"{', '.join(missing)} required (on the command line or in --config)")
    return arguments


def _file_defaults(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            settings = tomllib.load(file)
    except OSError as error:
        parser.error(f"cannot read config file {path}: {error.strerror or error}")
    except tomllib.TOMLDecodeError as error:
        parser.error(f"config file {path} is not valid TOML: {error}")
    actions = {action.dest: action for action in parser._actions
               if action.option_strings and action.dest not in ("help", "version", "config")}
    defaults: dict[str, Any] = {}
    for key, value in settings.items():
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None:
            parser.error(f"config file {path}: unknown key {key!r} (keys: "
                         f"{', '.join(sorted(name.replace('_', '-') for name in actions))})")
        defaults[dest] = _setting(parser, path, key, action, value)
    return defaults


def _setting(parser: argparse.ArgumentParser, path: str, key: str, action: argparse.Action, value: Any) -> Any:
    """``value`` as the option would hold it once parsed."""
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            parser.error(f"config file {path}: {key} must be true or false, not {value!r}")
        return value
    if isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            parser.error(f"config file {path}: {key} must be a string or a list of strings")
        value = ",".join(value)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        parser.error(f"config file {path}: {key} must be a string or a number, not {value!r}")
    text = str(value)
    try:
        converted = action.type(text) if action.type is not None else text  # type: ignore[operator]
    except (TypeError, ValueError):
        parser.error(f"config file {path}: invalid value for {key}: {value!r}")
    if action.choices is not None and converted not in action.choices:
        parser.error(f"config file {path}: {key} must be one of {', '.join(map(str, action.choices))}, "
                     f"not {value!r}")
    return converted


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class RepeatFilter(logging.Filter):
    """Lets a warning (or worse) through at most once per ``interval`` for
    each logger and message template; the next one says how many were left
    out.  Below WARNING, everything passes."""

    def __init__(self, interval: float = REPEAT_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._throttle = Throttle(interval, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        left_out = self._throttle.admit((record.name, record.levelno, str(record.msg)))
        if left_out is None:
            return False
        if left_out:
            record.msg = (f"{record.msg} ({left_out} more like this in the last "
                          f"{self._throttle.interval:.0f}s not logged)")
        return True


def setup_logging(arguments: argparse.Namespace) -> logging.Handler:
    """Configure the root logger from the parsed options; the handler."""
    handler: logging.Handler
    if arguments.log_file:
        file_handler = logging.handlers.WatchedFileHandler(arguments.log_file)

        def reopen(signal_number: int, frame: Any) -> None:
            # Taken as "the file changed": the next record reopens it (no
            # lock taken in a signal handler, which may interrupt an emit).
            file_handler.dev = file_handler.ino = -1

        signal.signal(signal.SIGUSR2, reopen)
        handler = file_handler
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if arguments.log_format == "json" else logging.Formatter(LOG_FORMAT))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, arguments.log_level))
    return handler

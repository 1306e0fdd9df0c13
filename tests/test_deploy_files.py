"""The files in ``systemd/``: the unit templates pass ``systemd-analyze verify``
(with the installed commands in place of /opt/neostore/bin), and the example
config files are what neo-master and neo-storage accept."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from neostore.master_node import main as master_main
from neostore.storage_node import main as storage_main

SYSTEMD = pathlib.Path(__file__).resolve().parent.parent / "systemd"
BIN = os.path.dirname(sys.executable)


@pytest.mark.parametrize("unit", ["neo-master@.service", "neo-storage@.service"])
def test_the_unit_templates_pass_systemd_analyze_verify(unit: str, tmp_path: pathlib.Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is needed (Debian's systemd package)"
    text = (SYSTEMD / unit).read_text()
    assert "ExecStart=/opt/neostore/bin/" in text
    instance = tmp_path / unit.replace("@.", "@1.")
    instance.write_text(text.replace("/opt/neostore/bin", BIN))
    done = subprocess.run([analyze, "verify", str(instance)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr  # no warning either (an unknown key is only a warning)


def test_the_example_config_files_are_accepted() -> None:
    master = master_main.master_config(master_main.parse_args(["--config", str(SYSTEMD / "master.toml.example")]))
    assert master.masters == ("10.0.0.1:5551", "10.0.0.2:5551", "10.0.0.3:5551") and master.node_id == 1
    assert master.metrics == "10.0.0.1:9151"
    storage = storage_main.storage_config(storage_main.parse_args(
        ["--config", str(SYSTEMD / "storage.toml.example")]))
    assert storage.masters == ["10.0.0.1:5551", "10.0.0.2:5551", "10.0.0.3:5551"]
    assert storage.label == "rack-1"

"""Atomic writes and JSON-lines reading: what every run folder relies on."""
from __future__ import annotations

import json
import os

import pytest

from irra_core.io_utils import append_jsonl, atomic_write, atomic_write_json, read_json, read_jsonl


def test_atomic_write_replaces_whole_file_with_usual_mode(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    atomic_write_json(path, {"R1": 1.0})
    atomic_write_json(path, {"R1": 2.0})
    assert json.loads(path.read_text()) == {"R1": 2.0}
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("old")

    def boom(handle):
        handle.write("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_jsonl_tolerates_only_a_truncated_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, {"epoch": 1})
    append_jsonl(path, {"epoch": 2})
    with open(path, "a") as handle:
        handle.write('{"epoch": 3, "lo')  # a writer killed mid-line
    assert [r["epoch"] for r in read_jsonl(path)] == [1, 2]
    path.write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match="log.jsonl:2"):
        read_jsonl(path)


def test_read_json_names_file_and_position(tmp_path):
    bad = tmp_path / "reid_raw.json"
    bad.write_text('[{"id": 1,}]')
    with pytest.raises(ValueError, match=r"reid_raw.json: malformed JSON at line 1"):
        read_json(bad)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_json(tmp_path / "missing.json")

"""The one atomic-write helper and the one device resolver."""
from __future__ import annotations

import pytest
import torch

from backend.devices import canonical_device, resolve_device
from backend.errors import UserError
from backend.fileio import write_atomic, write_with


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.json"
    write_atomic(target, "old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "a.bin"
    write_atomic(target, b"old")

    def half_then_fail(temp):
        temp.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_with(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_device_names():
    assert canonical_device("cuda") == "cuda:0"
    assert canonical_device("auto", auto="cuda:1") == "cuda:1"
    assert canonical_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when no GPU is present")
def test_missing_gpu_is_a_clear_error():
    with pytest.raises(UserError, match="no CUDA GPU.*use device auto or cpu"):
        resolve_device("cuda:0")

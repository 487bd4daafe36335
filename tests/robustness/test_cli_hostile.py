"""Hostile input and interrupted runs (issue 16): ``fdrl predict --out`` onto a foreign
file, undecodable or empty text, predictions resumed after the bundle or the inputs
changed, file modes of atomic writes, partial bundle folders left by a killed
``fdrl train``."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from fdrl.cli import main
from fdrl.utils.io import atomic_path, write_text
from tests.robustness import error_line

# ----------------------------------------------------------------------------- file modes


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_atomic_writes_get_the_mode_a_plain_open_gives(tmp_path, umask_027):
    from safetensors.torch import save_file
    import torch

    with atomic_path(tmp_path / "model.safetensors") as tmp:  # safetensors recreates the file
        save_file({"w": torch.zeros(2)}, str(tmp))
    write_text(tmp_path / "bundle.json", "{}")
    with open(tmp_path / "plain.txt", "w") as fh:
        fh.write("x")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"model.safetensors": 0o640, "bundle.json": 0o640, "plain.txt": 0o640}
    # replacing a file keeps its mode, as open(path, "w") does
    os.chmod(tmp_path / "bundle.json", 0o604)
    write_text(tmp_path / "bundle.json", "[]")
    assert stat.S_IMODE((tmp_path / "bundle.json").stat().st_mode) == 0o604

"""A model directory for the model tests: one file of every ModelPack role, and a group of data."""

from __future__ import annotations

import json
import os
from pathlib import Path


def make_model(root: Path, weight_size: int = 3 << 20) -> Path:
    """A small model directory with one file of every role, and a group of data files."""
    (root / "tokenizer").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "model-00001.safetensors").write_bytes(os.urandom(weight_size))
    (root / "model-00002.safetensors").write_bytes(os.urandom(weight_size // 2))
    (root / "config.json").write_text(json.dumps({"hidden_size": 64}))
    (root / "generation_config.json").write_text("{}")
    (root / "tokenizer" / "tokenizer.json").write_text(json.dumps({"vocab": ["a", "b"]}))
    (root / "README.md").write_text("# tiny model\n")
    (root / "LICENSE").write_text("Apache-2.0\n")
    (root / "inference.py").write_text("print('hello')\n")
    (root / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "run.sh").chmod(0o755)
    for number in range(5):
        (root / "data" / f"part-{number}.csv").write_text(f"x,y\n{number},{number * 2}\n")
    return root


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every regular file under ``root``: its bytes and permission bits."""
    return {
        path.relative_to(root).as_posix(): (path.read_bytes(), path.stat().st_mode & 0o777)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }

"""Named pretrained models: ``--saved_model <name>`` in demo.py, test.py and train.py.

Nothing is downloaded at run time. Each entry says where its weights come from and the options
the model needs (stages, character set, image size, preprocessing).
"""
from __future__ import annotations

from pathlib import Path

REGISTRY: dict[str, dict] = {}


def resolve_saved_model(value: str) -> tuple[Path, dict | None]:
    """A path → (path, None); a registered name → (its file, its ModelConfig dict)."""
    path = Path(value)
    if path.exists() or value not in REGISTRY:
        return path, None
    entry = REGISTRY[value]
    return entry["locate"](), entry["config"]

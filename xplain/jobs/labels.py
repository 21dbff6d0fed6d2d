"""Class names: ImageNet-1k's (bundled, for zoo models) or a user's labels file."""
from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..errors import InputError


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names, index = class id (torchvision's and paddle.vision's
    numbering)."""
    path = resources.files("xplain") / "data" / "imagenet_classes.json"
    return tuple(json.loads(path.read_text(encoding="utf-8"))["classes"])


def read_labels(path: str | Path) -> list[str]:
    """Class names from a file: a JSON list (or ``{"classes": [...]}``), else one name per
    line (blank lines at the end ignored)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"no labels file at {str(path)!r}")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        data = json.loads(text)
        names = data.get("classes") if isinstance(data, dict) else data
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InputError(f"{path}: a labels JSON file holds a list of names or "
                             f'{{"classes": [...]}}')
        return names
    return text.rstrip("\n").split("\n")


def class_names(labels: str | Path | Sequence[str] | None, num_classes: int,
                zoo: bool) -> list[str] | None:
    """The names for a model with ``num_classes`` outputs: from ``labels`` (a file or a list),
    else ImageNet's for a zoo model with 1,000 outputs, else ``None`` (indices are shown)."""
    if labels is None:
        return list(imagenet_classes()) if zoo and num_classes == 1000 else None
    names = read_labels(labels) if isinstance(labels, (str, Path)) else list(labels)
    if len(names) != num_classes:
        raise InputError(f"the labels name {len(names)} classes but the model outputs "
                         f"{num_classes} scores; give one name per output")
    return names

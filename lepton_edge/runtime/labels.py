"""Class names: from a labels file, an inline list, or the model's own metadata."""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

from lepton_edge.core.errors import ConfigError

log = logging.getLogger(__name__)

# Metadata keys read by labels_from_metadata, in order of preference.
LEPTON_LABELS_KEY = "lepton.labels"
ULTRALYTICS_NAMES_KEY = "names"

# A class id above this in a `names` dict is treated as malformed rather than allocated.
_MAX_CLASS_ID = 100_000


def load_labels(spec: Path | str | list[str] | None) -> tuple[str, ...]:
    """Labels from a text file (one per line, blank lines skipped) or an inline list; None gives ()."""
    if spec is None:
        return ()
    if isinstance(spec, list | tuple):
        return tuple(str(label).strip() for label in spec)
    path = Path(spec)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: labels file not found; set model.labels to a text file with one label per line, "
            "an inline list, or remove it to use the labels in the model metadata"
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            f"{path}: model.labels is a directory; it must be a text file with one label per line"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"{path}: cannot read labels file ({e}); it must be UTF-8 text, one label per line"
        ) from None
    labels = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not labels:
        raise ConfigError(f"{path}: labels file is empty; write one label per line")
    return labels


def labels_from_metadata(metadata: dict[str, str]) -> tuple[str, ...]:
    """Labels stored in model metadata: ``lepton.labels`` (a JSON list) or Ultralytics ``names``.

    Ultralytics writes ``names`` as a Python dict literal (``"{0: 'person', 1: 'bicycle'}"``); it is
    parsed with :func:`ast.literal_eval`, never evaluated. Malformed values give ``()`` and a warning.
    """
    raw = metadata.get(LEPTON_LABELS_KEY)
    if raw is not None:
        labels = _parse_lepton_labels(raw)
        if labels is not None:
            return labels
        log.warning(
            "model metadata %r is not a JSON list of strings; ignoring it: %.200r", LEPTON_LABELS_KEY, raw
        )
    raw = metadata.get(ULTRALYTICS_NAMES_KEY)
    if raw is not None:
        labels = _parse_names(raw)
        if labels is not None:
            return labels
        log.warning(
            "model metadata %r is not a dict of class id to name (or a list of names); ignoring it: %.200r",
            ULTRALYTICS_NAMES_KEY, raw,
        )
    return ()


def _parse_lepton_labels(raw: str) -> tuple[str, ...] | None:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def _parse_names(raw: str) -> tuple[str, ...] | None:
    try:
        value = ast.literal_eval(raw)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    if isinstance(value, list | tuple):
        return tuple(str(v) for v in value)
    if not isinstance(value, dict) or not value:
        return None
    names: dict[int, str] = {}
    for key, name in value.items():
        try:
            class_id = int(key)
        except (TypeError, ValueError):
            return None
        if isinstance(key, float | bool) or not 0 <= class_id <= _MAX_CLASS_ID:
            return None
        names[class_id] = str(name)
    # Gaps (ids never named) are filled with the id itself, as Detections.label would print it.
    return tuple(names.get(i, str(i)) for i in range(max(names) + 1))

"""The device config document of a device's workloads, and whether a device could ever receive them.

:func:`device_document` builds ``DesiredConfig.config`` for the set of workloads assigned to one device, in
the device config's multi form (``streams``, ``models``, ``workloads``; see below). The planner pushes it.
:func:`workload_problems` checks one workload before the API accepts it: the device config schema the device
validates it with (:class:`~lepton_edge.config.device.DeviceConfig`, in the single form: one stream, one
model), and the protocol's payload size limit for the desired document that carries it. A workload that
fails either would otherwise be accepted and then never run. :func:`device_conflicts` says which workloads
cannot share one device (the planner keeps them apart).

How a scheduler workload ``W`` becomes part of the document:

- stream ``W.workload_id``: ``uri`` = ``W.source_uri``, with ``W.config["source"]`` merged over it;
- a model entry: ``path`` = ``W.model``, ``artifact`` = ``W.artifact``, ``W.config["model"]`` merged over them,
  and ``backend`` = ``W.config["backend"]`` when set. Workloads whose entries are equal share one entry (the
  device loads the model once and batches their streams); its name is the model file's stem plus a hash
  of the entry (:func:`model_name`), so it is the same in every document and on every device;
- workload ``W.workload_id``: ``stream``, ``model``, and ``W.config``'s workload sections (:data:`WORKLOAD_SECTIONS`);
- every other key of ``W.config`` (``agent``, ``pipeline``...) is device-level: the device's sections are
  merged from its workloads' (nested mappings merge). Two workloads that set the same device-level value
  differently cannot share a device (:func:`device_conflicts`), nor can two that write the same sink file.

A document changes only by the workloads that changed: moving one workload off a device leaves the others'
stream, model and workload entries as they were, so the device applies the change live.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from lepton_edge.config.device import DeviceConfig
from lepton_edge.fleet.protocol import MAX_PAYLOAD_BYTES, DesiredConfig, ProtocolError, encode
from lepton_edge.scheduler.models import Workload

_WORST_VERSION = 2**63 - 1
"""The widest version a desired document can carry: the size check holds for any version."""
_WORST_ISSUER = "x" * 128
"""The longest ``issued_by`` (a protocol ``Name``)."""
_WORST_SIGNATURE = "A" * 86 + "=="
"""A signature (base64 ed25519: every signed document carries one this long)."""

STREAM_SECTION = "source"
"""The key of ``Workload.config`` that becomes the workload's stream entry."""
MODEL_SECTIONS = ("model", "backend")
"""Keys of ``Workload.config`` that go into the workload's model entry."""
WORKLOAD_SECTIONS = ("preprocess", "postprocess", "tracking", "analytics", "sinks")
"""Keys of ``Workload.config`` that go into the workload's own entry; every other key is device-level."""
_SIZE_MARGIN = 8192
"""Below the payload limit by this much (estimated), a document is not encoded to check its size."""


def device_config_for(workload: Workload) -> dict[str, Any]:
    """The single-form device config (one source, one model) that runs ``workload`` alone.

    ``model.path`` is the workload's model (relative paths are relative to the device's state folder),
    ``model.artifact`` its artifact when it has one, ``source.uri`` its source; ``workload.config`` is
    merged on top (nested mappings merge, other values replace). :func:`workload_problems` validates it;
    devices are sent :func:`device_document`.
    """
    model: dict[str, Any] = {"path": workload.model}
    if workload.artifact:
        model["artifact"] = dict(workload.artifact)
    return _merge({"model": model, "source": {"uri": workload.source_uri}}, dict(workload.config))


def model_entry(workload: Workload) -> dict[str, Any]:
    """The model entry of ``workload`` in a device document (see the module docstring)."""
    entry: dict[str, Any] = {"path": workload.model}
    if workload.artifact:
        entry["artifact"] = dict(workload.artifact)
    model = workload.config.get("model")
    if isinstance(model, dict):
        entry = _merge(entry, model)
    backend = workload.config.get("backend")
    if backend is not None:
        entry["backend"] = backend
    return entry


_NOT_NAME = re.compile(r"[^a-z0-9_.-]+")


def model_name(entry: dict[str, Any]) -> str:
    """The name of a model entry: a slug of its file stem and 8 hex digits of the entry's hash, e.g.
    ``yolov8n-1a2b3c4d`` (a workload id pattern); equal entries have equal names, always."""
    path = str(entry.get("path", "")).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    stem = path.rsplit(".", 1)[0] if "." in path.lstrip(".") else path
    slug = _NOT_NAME.sub("-", stem.lower()).strip("-._")[:55] or "model"
    digest = hashlib.sha256(json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"{slug}-{digest[:8]}"


def _parts(workload: Workload) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(stream entry, model entry, workload entry without its model name, device-level sections)."""
    config = dict(workload.config)
    stream = {"uri": workload.source_uri}
    if isinstance(config.get(STREAM_SECTION), dict):
        stream = _merge(stream, config[STREAM_SECTION])  # type: ignore[arg-type]
    entry = {"stream": workload.workload_id, **{k: config[k] for k in WORKLOAD_SECTIONS if k in config}}
    device = {k: v for k, v in config.items() if k != STREAM_SECTION and k not in MODEL_SECTIONS + WORKLOAD_SECTIONS}
    return stream, model_entry(workload), entry, device


def device_document(workloads: Sequence[Workload]) -> dict[str, Any]:
    """The device config document (``DesiredConfig.config``, multi form) that runs ``workloads`` on one device.

    Entries are ordered by name, so the same set gives the same document in any order. Device-level sections
    are merged in workload id order (conflicts are :func:`device_conflicts`' business: the planner never
    puts conflicting workloads together).
    """
    streams: dict[str, Any] = {}
    models: dict[str, Any] = {}
    entries: dict[str, Any] = {}
    device: dict[str, Any] = {}
    for w in sorted(workloads, key=lambda w: w.workload_id):
        stream, model, entry, extra = _parts(w)
        name = model_name(model)
        streams[w.workload_id] = stream
        models[name] = model
        entries[w.workload_id] = {"stream": entry.pop("stream"), "model": name, **entry}
        device = _merge(device, extra)
    return {**device, "streams": streams, "models": dict(sorted(models.items())), "workloads": entries}


def split_document(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each workload of a multi-form document as a single-form device config (its stream as ``source``, its
    model entry as ``model`` and ``backend``, the device-level sections); a single-form document is one
    workload named ``default``; an idle or empty one has none. An entry naming a stream or model the document
    lacks has no ``source`` or ``model``, so the device schema says one is missing."""
    if "workloads" not in document and "streams" not in document and "models" not in document:
        if document.get("idle") is True or not document:
            return {}
        return {"default": dict(document)}
    device = {k: v for k, v in document.items() if k not in ("streams", "models", "workloads")}
    streams, models = document.get("streams") or {}, document.get("models") or {}
    out: dict[str, dict[str, Any]] = {}
    for name, entry in (document.get("workloads") or {}).items():
        entry = dict(entry) if isinstance(entry, dict) else {}
        stream_name, model_key = entry.pop("stream", None), entry.pop("model", None)
        config: dict[str, Any] = {**device, **entry}
        if isinstance(streams.get(stream_name), dict):
            config["source"] = streams[stream_name]
        if isinstance(models.get(model_key), dict):
            model = dict(models[model_key])
            if "backend" in model:
                config["backend"] = model.pop("backend")
            config["model"] = model
        out[name] = config
    return out


def device_conflicts(workloads: Sequence[Workload]) -> dict[str, str]:
    """The workloads of ``workloads`` that cannot join the ones before them on one device -> why.

    Walks ``workloads`` in the given order (put the ones to keep first): a workload conflicts when it sets a
    device-level value (``agent``, ``pipeline``...) differently from one already accepted, writes a sink
    file one already accepted writes, or would take the device's document over the payload limit.
    """
    conflicts: dict[str, str] = {}
    device: dict[str, Any] = {}
    owner: dict[tuple[str, ...], str] = {}
    sink_paths: dict[str, str] = {}
    accepted: list[Workload] = []
    estimate = 0
    for w in workloads:
        stream, model, entry, extra = _parts(w)
        clash = _clash(device, extra, ())
        if clash is not None:
            conflicts[w.workload_id] = (
                f"device-level setting {'.'.join(clash)} differs from workload {owner.get(clash, '?')}'s"
            )
            continue
        paths = [str(s["path"]) for s in entry.get("sinks") or [] if isinstance(s, dict) and "path" in s]
        taken = next((p for p in paths if p in sink_paths), None)
        if taken is not None:
            conflicts[w.workload_id] = f"writes sink file {taken!r}, as workload {sink_paths[taken]} does"
            continue
        size = len(json.dumps([stream, model, entry, extra], separators=(",", ":")))
        if estimate + size > MAX_PAYLOAD_BYTES - _SIZE_MARGIN:
            try:
                desired_size(device_document([*accepted, w]))
            except ProtocolError:
                conflicts[w.workload_id] = "the device's desired config would be over the protocol's payload limit"
                continue
        estimate += size
        accepted.append(w)
        for leaf in _leaves(extra, ()):
            owner.setdefault(leaf, w.workload_id)
        device = _merge(device, extra)
        sink_paths.update((p, w.workload_id) for p in paths)
    return conflicts


def _clash(base: dict[str, Any], extra: dict[str, Any], at: tuple[str, ...]) -> tuple[str, ...] | None:
    """The first path where ``extra`` sets a value ``base`` has differently (nested mappings compared inside)."""
    for key, value in extra.items():
        if key not in base:
            continue
        old = base[key]
        if isinstance(value, dict) and isinstance(old, dict):
            inner = _clash(old, value, (*at, key))
            if inner is not None:
                return inner
        elif old != value:
            return (*at, key)
    return None


def _leaves(data: dict[str, Any], at: tuple[str, ...]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for key, value in data.items():
        out.extend(_leaves(value, (*at, key)) if isinstance(value, dict) and value else [(*at, key)])
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def with_change(workload: Workload, config_patch: dict[str, Any], artifact: dict[str, Any] | None) -> Workload:
    """``workload`` as a rollout changes it: ``config_patch`` merged over its config (nested mappings merge),
    ``artifact`` (when given) in place of its artifact."""
    return workload.model_copy(
        update={"config": _merge(dict(workload.config), config_patch), "artifact": artifact or workload.artifact}
    )


def desired_size(config: dict[str, Any]) -> int:
    """Bytes of the largest desired document carrying ``config``; raises ProtocolError over the limit."""
    desired = DesiredConfig.model_construct(
        version=_WORST_VERSION, config=config, issued_at=9_999_999_999.999, issued_by=_WORST_ISSUER,
        signature=_WORST_SIGNATURE,
    )  # fmt: skip
    return len(encode(desired))


def _body_loc(workload: Workload, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Where a problem of the device config document lies in the workload (a request body path)."""
    if loc and loc[0] in workload.config:
        return ("body", "config", *loc)
    if loc[:2] == ("model", "path"):
        return ("body", "model")
    if loc[:2] == ("model", "artifact"):
        return ("body", "artifact", *loc[2:])
    if loc[:2] == ("source", "uri"):
        return ("body", "source_uri")
    return ("body", "config", *loc)


def workload_problems(workload: Workload) -> list[dict[str, Any]]:
    """Why a device could not run ``workload`` (pydantic-style errors with body locations); [] when fine.

    Checks the workload alone: its single-form config against the device schema, and the size of the
    document that would carry it alone (conflicts with other workloads are the planner's, see
    :func:`device_conflicts`).
    """
    config = device_config_for(workload)
    problems: list[dict[str, Any]] = []
    try:
        desired_size(config)
        desired_size(device_document([workload]))
    except ProtocolError as e:
        problems.append(
            {
                "type": "too_large",
                "loc": ("body", "config"),
                "msg": f"the desired config that would carry this workload is over the protocol's "
                f"{MAX_PAYLOAD_BYTES}-byte payload limit ({e}); make config smaller",
                "input": None,
            }
        )
        return problems  # a document this large is not worth validating field by field
    if "device_id" in workload.config:
        problems.append(
            {
                "type": "value_error",
                "loc": ("body", "config", "device_id"),
                "msg": "identity is local to each device: remove device_id from the workload config",
                "input": None,
            }
        )
    try:
        DeviceConfig.model_validate(config)
    except ValidationError as e:
        for err in e.errors():
            problems.append(
                {
                    "type": err["type"],
                    "loc": _body_loc(workload, tuple(err["loc"])),
                    "msg": err["msg"],
                    "input": err.get("input"),
                }
            )
    return problems

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
- each inline cascade of ``W.config["cascade"]`` (a classifier run on crops of the detections): its model
  becomes a model entry named by the cascade's ``name`` (the key each detection carries its answer under, as
  on a device with a single-form config), the workload's cascade names it;
- every other key of ``W.config`` (``agent``, ``pipeline``...) is device-level: the device's sections are
  merged from its workloads' (nested mappings merge). Workloads that would break a rule of the device config
  together (a device-level value set differently, one sink file written twice, two artifacts, more workloads
  or models than a device config holds...) never share a device: :func:`device_conflicts`.

A document changes only by the workloads that changed: moving one workload off a device leaves the others'
stream, model and workload entries as they were, so the device applies the change live.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from lepton_edge.config.device import DeviceConfig
from lepton_edge.config.workloads import MAX_MODELS, MAX_WORKLOADS, SINGLE_WORKLOAD
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
CASCADE_SECTION = "cascade"
"""The key of ``Workload.config`` whose inline classifiers become model entries named by each cascade's ``name``."""
WORKLOAD_SECTIONS = ("preprocess", "postprocess", "tracking", "analytics", "sinks")
"""Keys of ``Workload.config`` that go into the workload's own entry; every other key (but the ones above) is
device-level."""
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


class _Parts:
    """One workload's share of a device document."""

    def __init__(self, workload: Workload) -> None:
        config = dict(workload.config)
        self.workload_id = workload.workload_id
        self.stream: dict[str, Any] = {"uri": workload.source_uri}
        if isinstance(config.get(STREAM_SECTION), dict):
            self.stream = _merge(self.stream, config[STREAM_SECTION])  # type: ignore[arg-type]
        self.model = model_entry(workload)
        self.model_name = model_name(self.model)
        self.cascade_models: dict[str, dict[str, Any]] = {}
        cascades = []
        for inline in config.get(CASCADE_SECTION) or []:
            if not isinstance(inline, dict):
                continue
            inline = dict(inline)
            name, model = str(inline.pop("name", "")), inline.pop("model", None)
            self.cascade_models[name] = dict(model) if isinstance(model, dict) else {}
            cascades.append({**inline, "model": name})
        self.entry: dict[str, Any] = {
            "stream": workload.workload_id,
            "model": self.model_name,
            **{k: config[k] for k in WORKLOAD_SECTIONS if k in config},
            **({CASCADE_SECTION: cascades} if cascades else {}),
        }
        skip = {STREAM_SECTION, CASCADE_SECTION, *MODEL_SECTIONS, *WORKLOAD_SECTIONS}
        self.device = {k: v for k, v in config.items() if k not in skip}

    @property
    def models(self) -> dict[str, dict[str, Any]]:
        return {self.model_name: self.model, **self.cascade_models}


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
        parts = _Parts(w)
        streams[w.workload_id] = parts.stream
        models.update(parts.models)
        entries[w.workload_id] = parts.entry
        device = _merge(device, parts.device)
    return {**device, "streams": streams, "models": dict(sorted(models.items())), "workloads": entries}


def split_document(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each workload of a multi-form document as a single-form device config (its stream as ``source``, its
    model entry as ``model`` and ``backend``, its cascades inline, the device-level sections); a single-form
    document is one workload named ``main`` (as on the device); an idle or empty one has none. An entry naming a
    stream or model the document lacks has no ``source`` or ``model``, so the device schema says one is missing."""
    if "workloads" not in document and "streams" not in document and "models" not in document:
        if document.get("idle") is True or not document:
            return {}
        return {SINGLE_WORKLOAD: dict(document)}
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
        if isinstance(entry.get(CASCADE_SECTION), list):
            config[CASCADE_SECTION] = [
                {**c, "name": c.get("model"), "model": models.get(c.get("model"), {})}
                for c in entry[CASCADE_SECTION] if isinstance(c, dict)
            ]  # fmt: skip
        out[name] = config
    return out


def device_conflicts(workloads: Sequence[Workload]) -> dict[str, str]:
    """The workloads of ``workloads`` that cannot join the ones before them on one device -> why.

    Walks ``workloads`` in the given order (put the ones to keep first). A workload conflicts when it would
    break a rule of the device config (the device refuses the whole document otherwise):

    - it sets a device-level value (``agent``, ``pipeline``...) differently from one already accepted;
    - it writes a sink file one already accepted writes, or adds a second console sink;
    - its model comes from a signed artifact and another model of the device does too (one A/B slot);
    - a cascade model of its has the name of a different model already there;
    - the device would run more than its limits of workloads or models, or its document would be over the
      protocol's payload limit.
    """
    if _plain(workloads):
        return {}
    conflicts: dict[str, str] = {}
    device: dict[str, Any] = {}
    owner: dict[tuple[str, ...], str] = {}
    sink_paths: dict[str, str] = {}
    consoles: list[str] = []
    models: dict[str, tuple[dict[str, Any], str]] = {}
    accepted: list[Workload] = []
    estimate = 0
    for w in workloads:
        parts = _Parts(w)
        reason = _conflict(parts, device, owner, sink_paths, consoles, models, len(accepted))
        if reason is None:
            size = len(json.dumps([parts.stream, parts.models, parts.entry, parts.device], separators=(",", ":")))
            if estimate + size > MAX_PAYLOAD_BYTES - _SIZE_MARGIN:
                try:
                    desired_size(device_document([*accepted, w]))
                except ProtocolError:
                    reason = "the device's desired config would be over the protocol's payload limit"
            estimate += size
        if reason is not None:
            conflicts[w.workload_id] = reason
            continue
        accepted.append(w)
        for leaf in _leaves(parts.device, ()):
            owner.setdefault(leaf, w.workload_id)
        device = _merge(device, parts.device)
        sink_paths.update((path, w.workload_id) for path in _sink_paths(parts.entry))
        consoles += [w.workload_id] if _has_console(parts.entry) else []
        models.update((n, (m, w.workload_id)) for n, m in parts.models.items() if n not in models)
    return conflicts


def _plain(workloads: Sequence[Workload]) -> bool:
    """True when ``workloads`` cannot conflict: no config at all, within the limits, at most one artifact, and
    a document far below the payload limit (the common case, decided without building the document)."""
    if len(workloads) > MAX_WORKLOADS or any(w.config for w in workloads):
        return False
    artifacts = {(w.model, json.dumps(w.artifact, sort_keys=True)) for w in workloads if w.artifact}
    models = {(w.model, json.dumps(w.artifact, sort_keys=True)) for w in workloads}
    size = sum(len(w.source_uri) + len(w.model) + 2048 for w in workloads)  # an artifact reference is < 2 KiB
    return len(artifacts) <= 1 and len(models) <= MAX_MODELS and size < MAX_PAYLOAD_BYTES - _SIZE_MARGIN


def _conflict(
    parts: _Parts,
    device: dict[str, Any],
    owner: dict[tuple[str, ...], str],
    sink_paths: dict[str, str],
    consoles: list[str],
    models: dict[str, tuple[dict[str, Any], str]],
    accepted: int,
) -> str | None:
    """Why one workload cannot join the ones accepted so far (see :func:`device_conflicts`), or None."""
    clash = _clash(device, parts.device, ())
    if clash is not None:
        return f"device-level setting {'.'.join(clash)} differs from workload {owner.get(clash, '?')}'s"
    taken = next((path for path in _sink_paths(parts.entry) if path in sink_paths), None)
    if taken is not None:
        return f"writes sink file {taken!r}, as workload {sink_paths[taken]} does"
    if consoles and _has_console(parts.entry):
        return f"has a console sink, as workload {consoles[0]} does (one console per device)"
    for name, model in parts.cascade_models.items():
        if name in models and models[name][0] != model:
            return f"its cascade model {name!r} differs from the model of that name of workload {models[name][1]}"
    new = {n: m for n, m in parts.models.items() if n not in models}
    signed = [(models[n][1], n) for n in models if models[n][0].get("artifact")]
    if signed and any(m.get("artifact") for m in new.values()):
        return (f"its model comes from a signed artifact, as model {signed[0][1]} of workload {signed[0][0]} does "
                "(one artifact per device)")
    if accepted + 1 > MAX_WORKLOADS:
        return f"the device already runs {MAX_WORKLOADS} workloads, the most a device config holds"
    if len(models) + len(new) > MAX_MODELS:
        return f"the device would load more than {MAX_MODELS} models, the most a device config holds"
    return None


def _sink_paths(entry: dict[str, Any]) -> list[str]:
    return [
        os.path.normpath(str(s["path"])) for s in entry.get("sinks") or [] if isinstance(s, dict) and "path" in s
    ]


def _has_console(entry: dict[str, Any]) -> bool:
    return any(isinstance(s, dict) and s.get("type") == "console" for s in entry.get("sinks") or [])


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
    if not problems and _SCHEMA_KNOWS_MULTI_FORM:
        try:  # what the device is sent: the multi form, this workload alone
            DeviceConfig.model_validate(device_document([workload]))
        except ValidationError as e:
            problems.extend(
                {"type": err["type"], "loc": ("body", "config", *err["loc"]), "msg": err["msg"],
                 "input": err.get("input")}
                for err in e.errors()
            )  # fmt: skip
    return problems


_SCHEMA_KNOWS_MULTI_FORM = "workloads" in DeviceConfig.model_fields
"""Whether the device config schema validates the multi form (``streams``, ``models``, ``workloads``) too."""

"""The device config document a workload becomes, and whether a device could ever receive it.

:func:`device_config_for` builds ``DesiredConfig.config`` for a workload (the planner pushes it);
:func:`workload_problems` checks it before the API accepts a workload: the device config schema the device
validates it with (:class:`~lepton_edge.config.device.DeviceConfig`), and the protocol's payload size limit
for the desired document that carries it. A workload that fails either would otherwise be accepted and
then never run.
"""

from __future__ import annotations

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


def device_config_for(workload: Workload) -> dict[str, Any]:
    """The device config document (``DesiredConfig.config``) that runs ``workload``.

    ``model.path`` is the workload's model (relative paths are relative to the device's state folder),
    ``model.artifact`` its artifact when it has one, ``source.uri`` its source; ``workload.config`` is
    merged on top (nested mappings merge, other values replace).
    """
    model: dict[str, Any] = {"path": workload.model}
    if workload.artifact:
        model["artifact"] = dict(workload.artifact)
    return _merge({"model": model, "source": {"uri": workload.source_uri}}, dict(workload.config))


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
    """Why a device could not run ``workload`` (pydantic-style errors with body locations); [] when fine."""
    config = device_config_for(workload)
    problems: list[dict[str, Any]] = []
    try:
        desired_size(config)
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

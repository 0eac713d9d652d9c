"""Before a build: can the runtime feed every input of this model? And, for ``inspect``, what each input needs.

The runtime feeds an input from the image, a recorded array, a constant or state fed back from an output
(:mod:`lepton_edge.runtime.inputs`). :func:`check_feedable` refuses, before any work, a model the runtime could not
run that way with the data and ``model.inputs`` given: an input nothing feeds, an unsupported dtype, a constant or
state that does not fit, a dynamic dimension nothing resolves.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from lepton_edge.config.pipeline import InputsConfig
from lepton_edge.core.errors import ModelError
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.engines.options import BuildOptions
from lepton_edge.runtime.inputs import (
    FRAME_ARRAY,
    InputPlan,
    constant_candidates,
    plan_inputs,
    state_candidates,
)
from lepton_edge.runtime.sources.images import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

LABELLED_ARRAYS = frozenset({"labels", "boxes"})
"""A .npz holding one of these is a labelled image set, not a recording (see ``evaluation/compare.py``)."""


def _fixed(dim: object) -> bool:
    return isinstance(dim, int) and dim > 0


def _recording_arrays(data: str | Path | None) -> list[str] | None:
    """The arrays of a .npz/.npy recording (``[FRAME_ARRAY]`` for a .npy); None for other data or none."""
    if data is None:
        return None
    text = str(data)
    if text.lower().startswith("npy://"):
        text = text[len("npy://"):].partition("?")[0]
    path = Path(text)
    suffix = path.suffix.lower()
    if suffix == ".npy" and path.is_file():
        return [FRAME_ARRAY]
    if suffix != ".npz" or not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        arrays = [name[:-4] for name in archive.namelist() if name.endswith(".npy")]
    return None if LABELLED_ARRAYS & set(arrays) else arrays


def _is_image_data(data: str | Path | None) -> bool:
    """Images, a folder, a video, or a labelled set (images with labels or boxes): one image input is fed."""
    if data is None:
        return False
    path = Path(str(data))
    if path.suffix.lower() == ".npz" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return bool({f"{name}.npy" for name in LABELLED_ARRAYS} & set(archive.namelist()))
    return path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES or (
        path.is_file() and path.suffix.lower() not in (".npy", ".npz"))


def _hint(inputs: list[TensorSpec], outputs: list[TensorSpec], config: InputsConfig) -> str:
    """What model.inputs would likely need, from names and shapes."""
    given = {*config.constants, *(s.input for s in config.state)}
    hints = []
    for out, inp in state_candidates(inputs, outputs):
        if inp not in given:
            hints.append(f"'{inp}' looks like state fed back from output '{out}' (state: [{{output: {out}, "
                         f"input: {inp}}}], --state {out}={inp})")
    for name in constant_candidates(inputs):
        if name not in given:
            hints.append(f"'{name}' is an integer scalar, likely a constant (constants: {{{name}: VALUE}}, "
                         f"--constant {name}=VALUE)")
    return "; ".join(hints)


def check_feedable(model: Path, info: Any, config: InputsConfig | None, *, target: str,
                   data: list[str | Path | None], profiles: Any = None) -> InputPlan:
    """Raise ModelError, saying why and what to give, when the runtime could not feed ``model``'s inputs.

    ``data`` are the data sets the build reads (calibration, validation): a recording must hold an array for every
    input not given as a constant or state; image data feeds one input. For TensorRT, inputs whose dynamic
    dimensions only the data resolves (audio samples) need an explicit optimisation profile (``profiles``).
    """
    config = config or InputsConfig()
    inputs, outputs = list(info.inputs), list(info.outputs)
    image_data = any(_is_image_data(d) for d in data)
    try:
        plan = plan_inputs(inputs, outputs, config, source="image" if image_data else "tensor", where=str(model))
    except ModelError as e:
        hint = _hint(inputs, outputs, config)
        raise ModelError(f"the runtime could not run this model: {e}{'; ' + hint if hint else ''}") from None
    for link in plan.state:
        dynamic = [d for d in link.input.shape if not _fixed(d)]
        given = any(s.input == link.input.name and s.shape is not None for s in config.state)
        if len(dynamic) > 1 and not given:
            raise ModelError(f"{model}: state input {link.input.name!r} {link.input.shape_str} has "
                             f"{len(dynamic)} dynamic dimensions; the runtime can only take one (a batch) as 1. "
                             "Give the initial state's shape: model.inputs.state[].shape")
    for source in data:
        arrays = _recording_arrays(source)
        if arrays is None or len(plan.recorded) < 2:
            continue  # one recorded input reads `frames` or the only array, as the tensor source does
        if arrays == [FRAME_ARRAY] or FRAME_ARRAY in arrays or len(arrays) == 1:
            if len(plan.recorded) > 1:
                raise ModelError(_unfed(model, source, arrays, plan, inputs, outputs, config))
            continue
        missing = [name for name, array in plan.recorded.items() if array not in arrays]
        if missing:
            raise ModelError(_unfed(model, source, arrays, plan, inputs, outputs, config))
    if target == "tensorrt" and not profiles:
        sized_by_data = [s for s in inputs if s.name in plan.recorded and len(s.shape) != 4
                         and any(not _fixed(d) for d in s.shape[1:])]
        if sized_by_data:
            shown = ", ".join(f"{s.name} {s.shape_str}" for s in sized_by_data)
            first = sized_by_data[0]
            shape = "x".join(str(d) if _fixed(d) else "1" if i == 0 else "N" for i, d in enumerate(first.shape))
            raise ModelError(f"{model}: inputs {shown} have dynamic dimensions only the data resolves; TensorRT "
                             "needs an optimisation profile for them: --profile NAME:MIN:OPT:MAX (e.g. "
                             f"--profile {first.name}:{shape}:{shape}:{shape} with N the recorded size)")
    return plan


def whole_sequences(options: BuildOptions) -> BuildOptions:
    """``options`` for a stateful model: unless ``fidelity_samples`` was given, the fidelity gate compares whole
    recordings (up to the field's maximum), not their first 64 items, which may be the easy part of a sequence
    (Silero VAD: silence and noise before the speech)."""
    inputs = options.inputs
    stateful = inputs is not None and bool(inputs.state) and inputs.state_reset != "every_frame"
    if not stateful or "fidelity_samples" in options.model_fields_set:
        return options
    most = next(m.le for m in BuildOptions.model_fields["fidelity_samples"].metadata if hasattr(m, "le"))
    log.info("the model feeds state back: the fidelity gate compares whole sequences (up to %d items; "
             "--fidelity-samples to limit)", most)
    return options.model_copy(update={"fidelity_samples": most})


def _unfed(model: Path, source: Any, arrays: list[str], plan: InputPlan, inputs: list[TensorSpec],
           outputs: list[TensorSpec], config: InputsConfig) -> str:
    wanted = {name: array for name, array in plan.recorded.items()}
    hint = _hint(inputs, outputs, config)
    return (f"{model}: the runtime could not run this model on {source}: it reads inputs {wanted} (input: array) "
            f"from the recording, which holds {arrays}. Each input must be recorded (one array per input name), "
            f"a constant or state (model.inputs, or --constant / --state){': ' + hint if hint else ''}")


def describe_inputs(info: Any) -> list[dict[str, Any]]:
    """Per input: name, shape, dtype and what it looks like it needs (image, recorded, constant, state)."""
    states = {inp: out for out, inp in state_candidates(info.inputs, info.outputs)}
    constants = set(constant_candidates(info.inputs))
    described = []
    for spec in info.inputs:
        if spec.name in states:
            role = f"state (fed back from output {states[spec.name]}: --state {states[spec.name]}={spec.name})"
        elif spec.name in constants:
            role = f"constant (an integer scalar: --constant {spec.name}=VALUE)"
        elif len(spec.shape) == 4 and np.dtype(spec.dtype).kind in "fu":
            role = "image (preprocessed frames) or recorded"
        else:
            dynamic = [str(d) for d in spec.shape[1:] if not _fixed(d)]
            role = "recorded (an array per frame" + (f"; {', '.join(dynamic)} sized by the data)" if dynamic
                                                     else ")")
        described.append({"name": spec.name, "shape": list(spec.shape), "dtype": str(spec.dtype), "needs": role})
    return described

"""Where each model input comes from: the image, recorded arrays, constants, or state fed back from outputs.

:func:`plan_inputs` checks a model's inputs against ``model.inputs`` (:class:`InputsConfig`) and says, before any
frame, why a model cannot run (an input nothing feeds, an unsupported dtype, a constant or state that does not
fit). :class:`InputState` holds the constants and the recurrent state of one running model: the pipeline, the
calibration and ``compare`` all feed a model through it, so they feed it the same way.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lepton_edge.config.pipeline import InputsConfig
from lepton_edge.core.errors import ModelError
from lepton_edge.core.tensors import TensorSpec

log = logging.getLogger(__name__)

FRAME_ARRAY = "frames"
"""A one-input model reads a recording's ``frames`` array, or its only array, whatever the input's name."""

_STATE_SUFFIXES = ("n", "_n", "_out", "_next", "_new", "out", "_o")
_STATE_PREFIXES = ("next_", "new_", "out_", "present_", "present.")


@dataclass(frozen=True)
class StateLink:
    """One output fed back to one input: ``output_index`` in the model's output order."""

    output: str
    output_index: int
    input: TensorSpec
    shape: tuple[int, ...]


@dataclass
class InputPlan:
    """How every input of a model is fed."""

    image: TensorSpec | None = None
    """The input image frames are preprocessed into (image sources only)."""
    recorded: dict[str, str] = field(default_factory=dict)
    """Input name -> the recording's array that feeds it (tensor sources)."""
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    state: list[StateLink] = field(default_factory=list)
    reset: str = "on_reopen"
    specs: dict[str, TensorSpec] = field(default_factory=dict)

    @property
    def stateful(self) -> bool:
        """True when a frame's result depends on earlier frames: frames must run in order, none dropped."""
        return bool(self.state) and self.reset != "every_frame"

    @property
    def framed(self) -> list[str]:
        """Inputs that take a new value every frame (the image or recorded arrays), in model order."""
        names = [self.image.name] if self.image is not None else []
        return names + list(self.recorded)

    def describe(self) -> dict[str, Any]:
        """Each input's role, for logs and ``inspect``."""
        roles: dict[str, Any] = {}
        if self.image is not None:
            roles[self.image.name] = "image"
        for name, array in self.recorded.items():
            roles[name] = f"recorded ({array})"
        for name, value in self.constants.items():
            roles[name] = f"constant {value.tolist() if value.size <= 8 else f'{list(value.shape)} values'}"
        for link in self.state:
            roles[link.input.name] = f"state from {link.output} (zeros {list(link.shape)}, reset {self.reset})"
        return roles


def _numeric(spec: TensorSpec) -> bool:
    kind = np.dtype(spec.dtype).kind
    return kind in "fiub"


def _fixed(dim: object) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _state_shape(spec: TensorSpec, given: list[int] | None, where: str) -> tuple[int, ...]:
    if given is not None:
        shape = tuple(given)
        if len(shape) != len(spec.shape) or any(_fixed(d) not in (None, g) for d, g in zip(spec.shape, shape,
                                                                                         strict=False)):
            raise ModelError(f"{where}: state shape {list(shape)} does not fit input {spec.name!r} {spec.shape_str}")
        return shape
    return tuple(_fixed(d) or 1 for d in spec.shape)


def _constant(spec: TensorSpec, value: Any, where: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=spec.dtype)
    except (ValueError, TypeError, OverflowError) as e:
        raise ModelError(f"{where}: constant {spec.name!r} is not a rectangular array of {spec.dtype}: {e}") from None
    if np.issubdtype(spec.dtype, np.integer) and not np.array_equal(array, np.asarray(value, dtype=np.float64)):
        raise ModelError(f"{where}: constant {spec.name!r} = {value!r:.60} does not fit {spec.dtype}")
    if array.ndim == len(spec.shape) - 1 and spec.shape and _fixed(spec.shape[0]) in (None, 1):
        array = array[None]  # the batch axis may be left out
    problem = spec.accepts(array)
    if problem:
        raise ModelError(f"{where}: constant {spec.name!r} of shape {list(array.shape)}: {problem}")
    array.setflags(write=False)
    return array


def plan_inputs(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], config: InputsConfig | None, *,
                source: str, where: str = "model") -> InputPlan:
    """How ``inputs`` are fed from a source of kind ``source`` ("image" or "tensor") under ``config``.

    Raises ModelError naming the input and what to write in ``model.inputs`` when the runtime could not run the
    model: names the model does not have, an input nothing feeds, an image source with several inputs left,
    unsupported dtypes, constants or state shapes that do not fit.
    """
    config = config or InputsConfig()
    specs = {s.name: s for s in inputs}
    out_index = {s.name: i for i, s in enumerate(outputs)}
    out_specs = {s.name: s for s in outputs}
    named = [*config.constants, *config.recorded, *(s.input for s in config.state)]
    named += [config.image] if config.image else []
    unknown = [n for n in named if n not in specs]
    if unknown:
        raise ModelError(f"{where}: model.inputs names {unknown}, which are not inputs of this model; its inputs "
                         f"are {list(specs)}")
    bad_out = [s.output for s in config.state if s.output not in out_index]
    if bad_out:
        raise ModelError(f"{where}: model.inputs.state names output(s) {bad_out}, which this model does not have; "
                         f"its outputs are {list(out_index)}")
    plan = InputPlan(reset=config.state_reset, specs=dict(specs))
    for spec in inputs:
        if not _numeric(spec):
            raise ModelError(f"{where}: input {spec.name!r} has dtype {spec.dtype}, which the runtime cannot feed "
                             "(numbers and booleans only)")
    for name, value in config.constants.items():
        plan.constants[name] = _constant(specs[name], value, where)
    for link in config.state:
        spec, out = specs[link.input], out_specs[link.output]
        shape = _state_shape(spec, link.shape, where)
        if math.prod(shape) > (1 << 20):
            raise ModelError(f"{where}: state {spec.name!r} of shape {list(shape)} is too large (over 1048576 values)")
        declared = out.shape
        if len(declared) == len(shape) and any(_fixed(d) not in (None, s) for d, s in zip(declared, shape,
                                                                                        strict=True)):
            raise ModelError(f"{where}: output {out.name!r} {out.shape_str} cannot be fed back to input "
                             f"{spec.name!r} as {list(shape)}")
        if len(declared) != len(shape) and all(_fixed(d) for d in declared):
            raise ModelError(f"{where}: output {out.name!r} {out.shape_str} has another rank than input "
                             f"{spec.name!r} {spec.shape_str}")
        plan.state.append(StateLink(link.output, out_index[link.output], spec, shape))
    rest = [s for s in inputs if s.name not in plan.constants and s.name not in {x.input.name for x in plan.state}]
    if source == "image":
        _plan_image(plan, rest, config, where)
    else:
        if config.image:
            raise ModelError(f"{where}: model.inputs.image is {config.image!r} but the source gives recorded "
                             "tensors, not images")
        for spec in rest:
            plan.recorded[spec.name] = config.recorded.get(spec.name, spec.name)
        if not plan.recorded:
            raise ModelError(f"{where}: every input is a constant or state; nothing comes from the source")
    return plan


def _plan_image(plan: InputPlan, rest: list[TensorSpec], config: InputsConfig, where: str) -> None:
    if config.recorded:
        raise ModelError(f"{where}: model.inputs.recorded maps recording arrays, but the source gives images")
    if config.image:
        chosen = plan.specs[config.image]
    elif len(rest) == 1:
        chosen = rest[0]
    else:
        suggestion = "; ".join(hint for hint in (_suggest(spec) for spec in rest) if hint)
        raise ModelError(
            f"{where}: image sources feed one input, and {len(rest)} are left unfed: {[s.name for s in rest]}. "
            "Name the image input (model.inputs.image) and give the others as constants or state "
            f"(model.inputs.constants / state){': ' + suggestion if suggestion else ''}, or record every input "
            "in a .npz (one array per input name)"
        )
    others = [s.name for s in rest if s.name != chosen.name]
    if others:
        raise ModelError(f"{where}: with an image source, inputs {others} are fed by nothing; give them as "
                         "model.inputs.constants or state")
    plan.image = chosen


def _suggest(spec: TensorSpec) -> str:
    if len(spec.shape) == 0 and np.issubdtype(spec.dtype, np.integer):
        return f"{spec.name!r} is an integer scalar (a sample rate or a flag?)"
    return ""


def state_candidates(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> list[tuple[str, str]]:
    """(output, input) pairs that look like recurrent state: same rank, compatible dims and dtype, and the output
    named after the input (``state``/``stateN``, ``h``/``hn``, ``cache``/``cache_out``, ``past``/``present``)."""
    pairs = []
    for spec in inputs:
        low = spec.name.lower()
        names = {low + s for s in _STATE_SUFFIXES} | {p + low for p in _STATE_PREFIXES}
        if low.startswith("past"):
            names.add("present" + low[len("past"):])
        for out in outputs:
            if out.name.lower() not in names or np.dtype(out.dtype) != np.dtype(spec.dtype):
                continue
            if len(out.shape) != len(spec.shape):
                continue
            if all(_fixed(a) is None or _fixed(b) is None or a == b for a, b in zip(out.shape, spec.shape,
                                                                                    strict=True)):
                pairs.append((out.name, spec.name))
    return pairs


def constant_candidates(inputs: Sequence[TensorSpec]) -> list[str]:
    """Inputs that look like constants: integer scalars (a sample rate, a flag)."""
    return [s.name for s in inputs if len(s.shape) == 0 and np.issubdtype(s.dtype, np.integer)]


class InputState:
    """The constants and recurrent state of one running model; ``feeds`` adds them to a frame's own inputs.

    ``update`` takes the outputs of the inference just run (model output order) and keeps the state outputs for
    the next frame; ``reset`` goes back to zeros. Not thread-safe: one running sequence per instance.
    """

    def __init__(self, plan: InputPlan) -> None:
        self.plan = plan
        self.values: dict[str, np.ndarray] = {}
        self.frames = 0
        self.reset()

    def reset(self) -> None:
        self.values = {link.input.name: np.zeros(link.shape, link.input.dtype) for link in self.plan.state}
        self.frames = 0

    def feeds(self, framed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The complete feed: ``framed`` (image or recorded inputs) plus constants and the current state."""
        if self.plan.reset == "every_frame" and self.frames:
            self.reset()
        return {**framed, **self.plan.constants, **self.values}

    def update(self, outputs: Sequence[np.ndarray]) -> None:
        if not outputs:
            return  # no outputs: an inference that failed (a model on probation); the state stays as it was
        self.frames += 1
        for link in self.plan.state:
            value = np.asarray(outputs[link.output_index])
            if value.shape != link.shape:
                problem = link.input.accepts(value.astype(link.input.dtype, copy=False))
                if problem:
                    raise ModelError(f"state output {link.output!r} has shape {list(value.shape)}, which cannot "
                                     f"be fed back: {problem}")
            self.values[link.input.name] = np.array(value, dtype=link.input.dtype, copy=True)


def _into(data: np.ndarray, buffer: np.ndarray, spec: TensorSpec, array: str) -> np.ndarray:
    """``data`` copied into ``buffer`` (the batch axis added when missing); a new buffer when the input's dynamic
    dims take another size (allocated once per size change)."""
    data = np.asarray(data)
    if data.ndim == len(spec.shape) - 1:
        data = data[None]
    if data.shape != buffer.shape:
        problem = spec.accepts(data.astype(spec.dtype, copy=False))
        if problem:
            raise ModelError(f"recorded array {array!r} of shape {list(data.shape)} does not fit: {problem}")
        buffer = np.empty(data.shape, spec.dtype)
    np.copyto(buffer, data, casting="unsafe")
    return buffer


def fill_recorded(plan: InputPlan, data: np.ndarray | Mapping[str, np.ndarray],
                  buffers: dict[str, np.ndarray]) -> None:
    """Copy one recorded frame into ``buffers`` (input name -> array, replaced when a dynamic size changes).

    ``data`` is one array (a one-input model: a ``.npy`` or a ``.npz`` with ``frames`` or one array) or one array
    per name (a ``.npz`` with several arrays)."""
    if isinstance(data, Mapping):
        for name, array in plan.recorded.items():
            if array not in data:
                if len(plan.recorded) == 1 and len(data) == 1:
                    array = next(iter(data))
                else:
                    raise ModelError(
                        f"the recording has arrays {sorted(data)} but input {name!r} reads {array!r}; save one "
                        "array per input name (np.savez(path, **{input_name: frames})) or map them in "
                        "model.inputs.recorded"
                    )
            buffers[name] = _into(data[array], buffers[name], plan.specs[name], array)
        return
    if len(plan.recorded) != 1:
        raise ModelError(f"the recording holds one array, but the model reads {list(plan.recorded)} from it; record "
                         "a .npz with one array per input name (np.savez(path, **{input_name: frames}))")
    (name,) = plan.recorded
    buffers[name] = _into(data, buffers[name], plan.specs[name], FRAME_ARRAY)

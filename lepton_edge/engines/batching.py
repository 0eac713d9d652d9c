"""Can a model run several frames in one inference? :func:`batch_capability` says so, or why not, and
:func:`set_batch` gives a model's image input a dynamic (or fixed) batch axis where the graph allows it.

A batcher stacks the frames of several streams along axis 0 of the model's one framed input and splits every output
along axis 0 again. That works when the framed input's first axis is a batch the graph carries through to every
output. The graph is checked two ways, with the input's batch made symbolic: ONNX shape inference finds the first
node whose input has the batch axis and whose output has its first axis fixed (a Reshape or Flatten whose shape
constant hard-codes batch 1), and onnxruntime runs the model at batch 2 on zeros, naming the node that fails or the
output that lost the batch.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lepton_edge.core.errors import ConfigError, ModelError
from lepton_edge.engines.onnx_tools import ModelInfo, inspect_onnx
from lepton_edge.runtime.inputs import constant_candidates, state_candidates

log = logging.getLogger(__name__)

BatchKind = Literal["dynamic", "fixed", "single"]
DYNAMIC_BATCH = "batch"
"""The dim_param :func:`set_batch` names a dynamic batch axis with (Ultralytics' name for it)."""
PROBE_BATCH = 2
"""Batch onnxruntime runs the model at to check that the graph really batches."""

_SYMBOL = "__lepton_batch__"
_SHAPE_OPS = frozenset({"Shape", "Size"})
_ORT_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)'")


@dataclass(frozen=True)
class BatchCapability:
    """Whether a model can run several frames at once."""

    kind: BatchKind
    """dynamic: any batch size; fixed: exactly ``max_batch`` frames (fewer are padded); single: one frame a call."""
    max_batch: int | None
    """Most frames per call: None for a dynamic batch (any), B for a fixed batch, 1 for single."""
    input: str | None
    """The framed input the frames are stacked along (None when there is none)."""
    reason: str
    """Why the model cannot batch (single) or how it batches (fixed, dynamic)."""
    settable: bool = False
    """The graph carries a batch axis through: ``build --batch`` can make the input's batch dynamic or fixed."""
    fault: str | None = None
    """The node or tensor that stops batching, when the graph is at fault."""

    def describe(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)

    def summary(self) -> str:
        """One line for ``inspect``."""
        if self.kind == "dynamic":
            return f"dynamic (input {self.input}: any batch size)"
        if self.kind == "fixed":
            return f"fixed {self.max_batch} (input {self.input}; fewer frames are padded)"
        return f"no, 1 frame per call: {self.reason}"


def batch_capability(model: str | Path | ModelInfo, *, probe: bool = True) -> BatchCapability:
    """What batching ``model`` allows: a dynamic batch axis, a fixed batch B, or batch 1, and why not.

    Single when state is fed back between frames, when there are several framed inputs, when the framed input has
    no batch axis, a fixed batch of 1, or a graph that hard-codes batch 1 (the reason names the node). ``probe``
    also runs onnxruntime at batch 2 on zeros (skipped when a dynamic dimension other than the batch has no size).
    """
    info = model if isinstance(model, ModelInfo) else inspect_onnx(model)
    states = state_candidates(info.inputs, info.outputs)
    if states:
        shown = ", ".join(f"{inp!r} from output {out!r}" for out, inp in states)
        return BatchCapability("single", 1, None, f"state is fed back between frames ({shown}): each stream's "
                               "state is its own, so its frames run one at a time")
    constants = set(constant_candidates(info.inputs))
    framed = [spec for spec in info.inputs if spec.name not in constants]
    if len(framed) != 1:
        names = ", ".join(spec.name for spec in framed) or "none"
        return BatchCapability("single", 1, None, f"the model has {len(framed)} framed inputs ({names}); a batcher "
                               "stacks frames along one input")
    spec = framed[0]
    if not spec.shape:
        return BatchCapability("single", 1, spec.name, f"input {spec.name!r} is a scalar: it has no batch axis")
    first = spec.shape[0]
    if isinstance(first, int) and first > 1:
        return BatchCapability("fixed", first, spec.name, f"input {spec.name!r} {spec.shape_str} has a fixed batch "
                               f"of {first}: {first} frames per call, fewer are padded", settable=True)
    fault = graph_batch_fault(info, spec.name, probe=probe)
    if isinstance(first, int):  # a fixed batch of 1
        if fault is None:
            return BatchCapability("single", 1, spec.name, f"input {spec.name!r} {spec.shape_str} has a fixed batch "
                                   "of 1; the graph allows more: `build --batch dynamic` (or --batch N) sets it",
                                   settable=True)
        return BatchCapability("single", 1, spec.name, f"input {spec.name!r} {spec.shape_str} has a fixed batch "
                               f"of 1, and the graph hard-codes it: {fault}", fault=_fault_name(fault))
    if fault is not None:
        return BatchCapability("single", 1, spec.name, f"input {spec.name!r} {spec.shape_str} declares a dynamic "
                               f"batch, but the graph hard-codes batch 1: {fault}", fault=_fault_name(fault))
    return BatchCapability("dynamic", None, spec.name, f"input {spec.name!r} {spec.shape_str} has a dynamic batch "
                           "axis the graph carries to every output", settable=True)


def _fault_name(fault: str) -> str:
    match = re.search(r"'([^']+)'", fault)
    return match.group(1) if match else fault


def graph_batch_fault(info: ModelInfo, input_name: str, *, probe: bool = True) -> str | None:
    """Why the graph cannot batch along axis 0 of ``input_name`` (naming the node or tensor), or None."""
    import onnx

    proto = onnx.load(str(info.path), load_external_data=False)
    fault = _inferred_fault(proto, input_name)
    if fault is not None or not probe:
        return fault
    return _probe_fault(info, input_name)


def _with_symbolic_batch(proto: Any, input_name: str, batch: str | int) -> Any:  # onnx.ModelProto
    """A copy of ``proto`` with axis 0 of ``input_name`` and of every output set to ``batch`` (a dim_param or
    size), and no recorded intermediate shapes (they would keep the old batch)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    graph = copy.graph
    for value in [*(v for v in graph.input if v.name == input_name), *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.type.HasField("tensor_type") and len(dims) > 0:
            if isinstance(batch, str):
                dims[0].dim_param = batch
            else:
                dims[0].dim_value = batch
    del graph.value_info[:]
    return copy


def _dims(value: Any) -> list[str | int | None]:  # onnx.ValueInfoProto
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return []
    return [d.dim_param if d.HasField("dim_param") else d.dim_value if d.HasField("dim_value") else None
            for d in value.type.tensor_type.shape.dim]


def _constant_values(graph: Any) -> dict[str, list[int]]:  # onnx.GraphProto
    """Small integer constants by name (initializers and Constant nodes), for naming a shape constant."""
    from onnx import TensorProto, numpy_helper

    values: dict[str, list[int]] = {}
    tensors = [(t.name, t) for t in graph.initializer]
    tensors += [(n.output[0], a.t) for n in graph.node if n.op_type == "Constant"
                for a in n.attribute if a.name == "value"]
    for name, tensor in tensors:
        if tensor.data_type == TensorProto.INT64 and tensor.data_location != TensorProto.EXTERNAL and \
                len(tensor.dims) <= 1 and (not tensor.dims or tensor.dims[0] <= 8):
            values[name] = [int(v) for v in np.atleast_1d(numpy_helper.to_array(tensor))]
    return values


@dataclass(frozen=True)
class _FixingNode:
    """A node whose input carries the batch axis and whose output's axis 0 is fixed (shape inference's verdict)."""

    node: Any  # onnx.NodeProto of the graph it was found in
    output: str
    carried: str
    dim: int
    shape_input: list[int] | None
    """A Reshape's shape when it is a small integer constant, else None."""

    def describe(self) -> str:
        shape_note = ""
        if self.shape_input is not None:
            shape_note = f" (its shape constant {self.node.input[1]!r} is {self.shape_input})"
        elif self.node.op_type == "Flatten":
            shape_note = " (Flatten's axis folds the batch)"
        return (f"{self.node.op_type} node '{self.node.name or self.output}' fixes axis 0 of its output "
                f"{self.output!r} at {self.dim} while its input {self.carried!r} carries the batch{shape_note}; "
                "export it with a dynamic batch (a shape of 0 or -1 on axis 0)")


def _first_fixing_node(proto: Any, input_name: str) -> _FixingNode | None:
    """The first node (graph order) whose input carries the batch axis and whose output's axis 0 is fixed, found by
    ONNX shape inference with the batch symbolic; None when there is none or inference cannot run. ``node`` is the
    node of ``proto`` itself (same index), so a caller may edit it."""
    import onnx

    model = _with_symbolic_batch(proto, input_name, _SYMBOL)
    for value in model.graph.output:  # let inference, not the export, say what each output's batch is
        value.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as e:  # onnx raises several types (custom ops, bad graphs)
        log.debug("shape inference for the batch check failed: %s", e)
        return None
    graph = inferred.graph
    shapes = {v.name: _dims(v) for v in [*graph.input, *graph.value_info, *graph.output]}
    constants = _constant_values(graph)
    downstream = {input_name}  # tensors computed from the frames (shape arithmetic excluded)
    for index, node in enumerate(graph.node):
        if node.op_type in _SHAPE_OPS or not downstream.intersection(node.input):
            continue
        downstream.update(node.output)
        carried = [name for name in node.input if name in downstream and _batched(shapes.get(name, []))]
        if not carried:
            continue
        for out in node.output:
            dims = shapes.get(out, [])
            if dims and _fixed(dims[0]):
                shape = None
                if node.op_type == "Reshape" and len(node.input) > 1:
                    shape = _shape_constant(graph, constants, node.input[1])
                return _FixingNode(proto.graph.node[index], out, carried[0], int(dims[0]), shape)  # type: ignore[arg-type]
    return None


def _shape_constant(graph: Any, constants: dict[str, list[int]], name: str) -> list[int] | None:
    """The value of ``name`` when it is a small integer constant or a Concat (axis 0) of such constants."""
    if name in constants:
        return constants[name]
    producer = next((n for n in graph.node if name in n.output), None)
    if producer is None or producer.op_type != "Concat" or not all(i in constants for i in producer.input):
        return None
    return [v for i in producer.input for v in constants[i]]


def _inferred_fault(proto: Any, input_name: str) -> str | None:
    """Why shape inference says the graph cannot batch (the first node fixing axis 0), or None."""
    found = _first_fixing_node(proto, input_name)
    return found.describe() if found is not None else None


def _fixed(dim: object) -> bool:
    return isinstance(dim, int) and dim > 0


def _batched(dims: list[str | int | None]) -> bool:
    """Axis 0 is not a fixed size: inference kept the batch symbolic (maybe renamed, or unknown)."""
    return bool(dims) and not _fixed(dims[0])


def _probe_fault(info: ModelInfo, input_name: str) -> str | None:
    """Run onnxruntime at batch :data:`PROBE_BATCH` on zeros: the failing node, or an output that lost the batch."""
    import onnx
    import onnxruntime as ort

    spec = next(s for s in info.inputs if s.name == input_name)
    shape = [PROBE_BATCH, *(_probe_dim(d, info.metadata) for d in spec.shape[1:])]
    if any(d is None for d in shape):
        log.debug("%s: batch probe skipped: %s has a dynamic dimension with no size", info.path, spec.shape_str)
        return None
    proto = onnx.load(str(info.path), load_external_data=bool(info.external_data))
    model = _with_symbolic_batch(proto, input_name, _SYMBOL)
    feeds: dict[str, np.ndarray] = {spec.name: np.zeros(shape, spec.dtype)}
    for other in info.inputs:
        if other.name != spec.name:
            feeds[other.name] = np.zeros([d if isinstance(d, int) else 1 for d in other.shape], other.dtype)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the failure is reported, not logged
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        outputs = session.run(None, feeds)
    except Exception as e:  # onnxruntime raises several unrelated types
        text = str(e).strip()
        found = _ORT_NODE.search(text)
        message = text.split("Status Message:")[-1].strip().splitlines()[0][:200]
        if found:
            return (f"onnxruntime fails at batch {PROBE_BATCH} in {found.group(1)} node '{found.group(2)}' "
                    f"({message}); a node before it may hard-code batch 1")
        return f"onnxruntime fails at batch {PROBE_BATCH}: {message}"
    for value, out in zip(info.outputs, outputs, strict=True):
        rows = np.shape(out)[0] if np.ndim(out) else None
        if rows != PROBE_BATCH:
            return (f"output '{value.name}' has {rows if rows is not None else 'no'} rows on axis 0 for "
                    f"{PROBE_BATCH} frames: the graph mixes the frames of a batch")
    return None


def _probe_dim(dim: object, metadata: dict[str, str]) -> int | None:
    """A size for a non-batch dimension: its own, else the square Ultralytics ``imgsz`` for height and width."""
    if isinstance(dim, int) and dim > 0:
        return dim
    sizes = re.findall(r"\d+", metadata.get("imgsz", ""))
    return int(sizes[0]) if sizes else None


def set_batch(source: Path, dest: Path, batch: int | Literal["dynamic"]) -> BatchCapability:
    """Write ``source`` to ``dest`` with its framed input's batch axis dynamic (``"dynamic"``, named
    :data:`DYNAMIC_BATCH`) or fixed at ``batch``; the capability of the written model.

    A graph that hard-codes batch 1 in the shape of a Reshape (a constant, or a Concat of constants, with 1 on
    axis 0, whose data input carries the batch) has that 1 replaced by 0 (ONNX Reshape: copy the input's axis),
    then is proven by onnxruntime on random frames: at batch 1 it gives the original's outputs, at batch N each
    frame's outputs are those of a batch-1 call (:func:`unpin_reshapes`, :func:`verify_batched`).

    ModelError, naming the node or tensor at fault, when the graph cannot batch (see :func:`batch_capability`).
    """
    import onnx

    info = inspect_onnx(source)
    capability = batch_capability(info)
    proto = onnx.load(str(source), load_external_data=True)
    rewritten: list[str] = []
    if not capability.settable and capability.fault is not None and capability.input is not None:
        original = proto
        proto, rewritten = unpin_reshapes(original, capability.input, str(source))
        if not rewritten:  # the fault is not a Reshape shape constant (or only onnxruntime saw it)
            raise ModelError(f"{source}: cannot set batch {batch}: {capability.reason}")
        spec = next(s for s in info.inputs if s.name == capability.input)
        verify_batched(original, proto, spec, info, batch, rewritten, str(source))
    elif not capability.settable or capability.input is None:
        raise ModelError(f"{source}: cannot set batch {batch}: {capability.reason}")
    assert capability.input is not None
    value: str | int = DYNAMIC_BATCH if batch == "dynamic" else int(batch)
    try:
        onnx.save(_with_symbolic_batch(proto, capability.input, value), str(dest))
    except ValueError as e:  # protobuf's 2 GiB limit
        raise ModelError(f"{source}: cannot write it with a new batch axis ({e})") from None
    note = f"; Reshape node(s) {', '.join(rewritten)} take the batch from their input" if rewritten else ""
    if batch == "dynamic":
        return BatchCapability("dynamic", None, capability.input, f"input {capability.input!r} has a dynamic batch "
                               f"axis (set at build{note})", settable=True)
    result = batch_capability(inspect_onnx(dest))
    if result.kind == "single" and int(batch) > 1:
        raise ModelError(f"{source}: batch {batch} was set but the model does not run it: {result.reason}")
    return result


def unpin_reshapes(proto: Any, input_name: str, where: str) -> tuple[Any, list[str]]:
    """A copy of ``proto`` whose Reshapes no longer hard-code batch 1, and the names of the ones changed.

    Node after node (shape inference with a symbolic batch finds the next one), a Reshape whose data input carries
    the batch and whose shape is a constant or a Concat of constants with 1 on axis 0 and ``allowzero`` 0 gets a
    new shape constant with 0 there. The first fixing node that is anything else stops the rewrite: ModelError
    naming it when some Reshape was already changed (the graph still cannot batch), else the unchanged copy."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    rewritten: list[str] = []
    initializers = {t.name for t in model.graph.initializer}
    for _ in range(len(model.graph.node) + 1):
        found = _first_fixing_node(model, input_name)
        if found is None:
            return model, rewritten
        node = found.node
        allowzero = next((a.i for a in node.attribute if a.name == "allowzero"), 0)
        fixable = (node.op_type == "Reshape" and found.shape_input is not None and found.shape_input[0] == 1
                   and allowzero == 0)
        if not fixable:
            if rewritten:
                raise ModelError(f"{where}: cannot set a batch: after giving Reshape node(s) {', '.join(rewritten)} "
                                 f"the input's batch, {found.describe()}")
            return model, rewritten
        assert found.shape_input is not None
        name = f"{node.input[1]}__lepton_batch"
        if name not in initializers:
            shape = np.array([0, *found.shape_input[1:]], dtype=np.int64)
            model.graph.initializer.append(numpy_helper.from_array(shape, name))
            initializers.add(name)
        node.input[1] = name
        rewritten.append(f"'{node.name or found.output}'")
    raise ModelError(f"{where}: cannot set a batch: the Reshape rewrite did not converge")


VERIFY_BATCH = 3
"""Frames per call when :func:`verify_batched` checks a dynamic batch."""


def verify_batched(original: Any, candidate: Any, spec: Any, info: ModelInfo, batch: int | Literal["dynamic"],
                   rewritten: list[str], where: str) -> None:
    """Prove a rewritten graph with onnxruntime on random frames: at batch 1 its outputs are the original's, and at
    ``batch`` (:data:`VERIFY_BATCH` for dynamic) each frame's outputs are those of a batch-1 call. ModelError
    naming the rewritten nodes and the output that differs, otherwise."""
    import onnxruntime as ort

    size = VERIFY_BATCH if batch == "dynamic" else int(batch)
    dims = [_probe_dim(d, info.metadata) for d in spec.shape[1:]]
    nodes = ", ".join(rewritten)
    if any(d is None for d in dims):
        raise ModelError(f"{where}: cannot prove the rewrite of Reshape node(s) {nodes}: input {spec.name!r} "
                         f"{spec.shape_str} has a dynamic dimension with no size")
    rng = np.random.default_rng(0)
    dtype = np.dtype(spec.dtype)
    shape = [size, *dims]
    frames = (rng.random(shape) if dtype.kind == "f" else rng.integers(0, 255, shape)).astype(dtype)
    others = {o.name: np.zeros([d if isinstance(d, int) else 1 for d in o.shape], o.dtype)
              for o in info.inputs if o.name != spec.name}
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = 1

    def session(proto: Any, value: str | int) -> Any:
        model = _with_symbolic_batch(proto, spec.name, value)
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def check(got: np.ndarray, want: np.ndarray, name: str, what: str) -> None:
        scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-4 * scale):
            diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("nan")
            raise ModelError(f"{where}: Reshape node(s) {nodes} were given the input's batch, but output {name!r} "
                             f"{what} (shapes {list(got.shape)} vs {list(want.shape)}, max difference {diff:.3g}); "
                             "refused")

    try:
        reference = session(original, 1)
        single = session(candidate, 1)
        batched = session(candidate, DYNAMIC_BATCH if batch == "dynamic" else size)
        names = [o.name for o in reference.get_outputs()]
        ones = [single.run(None, {spec.name: frames[i:i + 1], **others}) for i in range(size)]
        for i in range(size):
            for name, got, want in zip(names, ones[i], reference.run(None, {spec.name: frames[i:i + 1], **others}),
                                       strict=True):
                check(got, want, name, "at batch 1 differs from the original model's")
        for index, (name, got) in enumerate(zip(names, batched.run(None, {spec.name: frames, **others}),
                                                strict=True)):
            want = np.concatenate([one[index] for one in ones])
            check(np.asarray(got), want, name, f"at batch {size} differs from {size} batch-1 calls")
    except ModelError:
        raise
    except Exception as e:  # onnxruntime raises several unrelated types
        text = str(e).strip().split("Status Message:")[-1].strip().splitlines()[0][:200]
        raise ModelError(f"{where}: Reshape node(s) {nodes} were given the input's batch, but onnxruntime fails "
                         f"to run the result ({text}); refused") from None


DEFAULT_STREAM_BATCH_CAP = 16
"""A dynamic-batch model's batch when its config gives no max_batch: the streams feeding it, at most this many
(``models.<name>.batch.max_batch``'s default)."""


@dataclass(frozen=True)
class StreamBatch:
    """The batches a device config runs a model at: TensorRT's profile tunes for ``streams``, up to ``max_batch``."""

    model: str
    """The model's name in the config (``model`` for the single-workload form)."""
    streams: int
    """Streams feeding the model: the profile's opt batch (at most ``max_batch``)."""
    max_batch: int | None
    """``models.<name>.batch.max_batch``, else the streams (at most :data:`DEFAULT_STREAM_BATCH_CAP`); None for a
    single-workload config that sets none (the build's own default applies)."""


def stream_batch(config: Mapping[str, Any], model: Path, where: Path) -> StreamBatch:
    """The batches the device config ``config`` (its YAML document, read from ``where``) runs ``model`` at.

    The single-workload form (``model:`` and ``source:``) feeds one stream. The multi-stream form names
    ``models`` (name -> {path, batch}) and ``workloads`` (a list, or name -> {stream, model}); the model is the one
    whose path is ``model`` (relative paths from the config's folder), or the only one. ConfigError, naming the file,
    when none matches.
    """
    models = config.get("models")
    if not isinstance(models, Mapping) or not models:
        single = config.get("model")
        configured = _max_batch(single)
        return StreamBatch("model", 1, configured)
    wanted = model.resolve()
    matching = [name for name, entry in models.items()
                if isinstance(entry, Mapping) and _resolved(entry.get("path"), where) == wanted]
    if not matching and len(models) == 1:
        matching = list(models)
    if len(matching) != 1:
        listed = ", ".join(f"{name} ({entry.get('path') if isinstance(entry, Mapping) else '?'})"
                           for name, entry in models.items())
        raise ConfigError(f"{where}: no single model in models has the path {model} (models: {listed}); build with "
                          "--model set to one of their paths")
    name = matching[0]
    workloads = config.get("workloads") or []
    entries = list(workloads.values()) if isinstance(workloads, Mapping) else list(workloads)
    streams = {str(w.get("stream", index)) for index, w in enumerate(entries)
               if isinstance(w, Mapping) and w.get("model") == name}
    count = max(len(streams), 1)
    configured = _max_batch(models[name])
    return StreamBatch(name, count, configured or min(count, DEFAULT_STREAM_BATCH_CAP))


def _resolved(path: object, where: Path) -> Path | None:
    if not isinstance(path, str | Path):
        return None
    path = Path(path)
    return (path if path.is_absolute() else where.parent / path).resolve()


def _max_batch(entry: object) -> int | None:
    batch = entry.get("batch") if isinstance(entry, Mapping) else None
    value = batch.get("max_batch") if isinstance(batch, Mapping) else None
    return value if isinstance(value, int) and value >= 1 else None

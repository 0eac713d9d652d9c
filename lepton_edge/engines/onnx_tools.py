"""ONNX model inspection: what a model is, and a refusal with a clear reason when it is not usable.

:func:`inspect_onnx` reads only the model file first (external weights are not loaded), checks that it
is a complete ONNX model with a supported opset, inputs and outputs, and that every external-data file
it names lies inside the model's folder, before anything else reads those files.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lepton_edge.core.errors import ConfigError, ModelError
from lepton_edge.core.fileio import refuse_lfs_pointer, sha256_file
from lepton_edge.core.tensors import Dim, TensorSpec
from lepton_edge.runtime.backends.onnxruntime import custom_op_reason
from lepton_edge.runtime.postprocess import TASK_KEY, infer_task

log = logging.getLogger(__name__)

SUPPORTED_OPSETS = range(11, 22)
"""Default-domain opsets lepton-edge builds and runs (onnxruntime and TensorRT 8.6+ both take them)."""

TARGETS = ("onnxruntime-cpu",)
"""Targets :func:`unsupported_ops` knows."""

_DEFAULT_DOMAINS = ("", "ai.onnx")
_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
_UNSORTED = "must be topologically sorted"
"""The ONNX checker's complaint about node order, which onnxruntime and TensorRT sort out themselves."""


@dataclass
class ModelInfo:
    """What :func:`inspect_onnx` found in a model file."""

    path: Path
    sha256: str
    """Fingerprint of the model: the file's sha256, or with external data, the sha256 over the model file's
    digest and each external file's name and digest (so changed weights change it too)."""
    opset: int
    """Opset of the default ONNX domain."""
    ir_version: int
    producer: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metadata: dict[str, str]
    ops: dict[str, int]
    """Node count per op type, subgraphs included; ops outside the default domain are keyed ``domain:Op``."""
    has_qdq: bool
    """True when the model already holds QuantizeLinear/DequantizeLinear nodes (it is quantized)."""
    external_data: list[str]
    """External-data files (relative to the model's folder), in first-use order."""
    size_bytes: int
    """On-disk size: the model file plus its external-data files."""
    opsets: dict[str, int] = field(default_factory=dict)
    """Every imported opset by domain (the default domain as ``""``)."""


def _load_proto(path: Path):  # -> onnx.ModelProto
    import onnx
    from google.protobuf.message import DecodeError

    try:
        size = path.stat().st_size
    except OSError as e:
        raise ModelError(f"{path}: cannot read the model file: {e}") from None
    if size == 0:
        raise ModelError(f"{path}: the file is empty, not an ONNX model; export the model again")
    try:
        with open(path, "rb") as f:
            first = f.read(1)
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as e:
        # Every ONNX file starts with field 1 (ir_version, a varint): tag byte 0x08.
        if first == b"\x08":
            raise ModelError(
                f"{path}: not a complete ONNX model: it cannot be parsed ({e}). The file looks truncated or "
                "corrupt (an interrupted download or copy?); copy or export it again"
            ) from None
        raise ModelError(
            f"{path}: not an ONNX model (it cannot be parsed as one: {e}); give an .onnx file exported with "
            "torch.onnx.export, tf2onnx or another ONNX exporter"
        ) from None
    except OSError as e:
        raise ModelError(f"{path}: cannot read the model file: {e}") from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelError(
            f"{path}: not an ONNX model (no IR version or graph in it); give an .onnx file exported with "
            "torch.onnx.export, tf2onnx or another ONNX exporter"
        )
    return model


def _all_tensors(graph) -> Iterator:  # onnx.GraphProto -> TensorProto
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _all_tensors(attribute.g)
            for sub in attribute.graphs:
                yield from _all_tensors(sub)


def _all_nodes(graph) -> Iterator:  # onnx.GraphProto -> NodeProto
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _all_nodes(attribute.g)
            for sub in attribute.graphs:
                yield from _all_nodes(sub)


def _external_files(model, path: Path) -> list[str]:
    """The external-data locations, validated: relative, inside the model's folder, present, long enough."""
    from onnx import TensorProto

    folder = path.parent.resolve()
    needed: dict[str, int] = {}
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        where = f"{path}: initializer {tensor.name!r} stores its data in external file {location!r}"
        if not location:
            raise ModelError(f"{path}: initializer {tensor.name!r} uses external data but names no file; "
                             "export the model again")
        parts = Path(location).parts
        if Path(location).is_absolute() or location.startswith(("/", "\\")) or ".." in parts or \
                re.match(r"^[A-Za-z]:", location):
            raise ModelError(
                f"{where}, which points outside the model's folder (absolute path or '..'); refusing it as a "
                "path traversal. Keep external data files next to the model and re-save it with relative "
                "locations (onnx.save(model, path, save_as_external_data=True))"
            )
        target = (path.parent / location)
        if not target.resolve().is_relative_to(folder):
            raise ModelError(
                f"{where}, which resolves (through a symbolic link) to {target.resolve()}, outside the "
                f"model's folder {folder}; refusing it as a path traversal. Copy the data file next to the model"
            )
        if not target.is_file():
            raise ModelError(
                f"{where}, which is missing; copy {location!r} into {path.parent} next to the model"
            )
        try:
            end = int(entries.get("offset", 0) or 0) + int(entries.get("length", 0) or 0)
        except ValueError:
            raise ModelError(f"{where} with a malformed offset or length; export the model again") from None
        needed[location] = max(needed.get(location, 0), end)
    for location, end in needed.items():
        size = (path.parent / location).stat().st_size
        if size < end:
            raise ModelError(
                f"{path}: external data file {location!r} holds {size} bytes but the model reads up to byte "
                f"{end}; the file is truncated, copy it again"
            )
    return list(needed)


def _spec(value_info) -> TensorSpec:  # onnx.ValueInfoProto
    from onnx import helper

    kind = value_info.type.WhichOneof("value")
    if kind != "tensor_type":
        return TensorSpec(value_info.name, (), np.dtype(object))
    tensor_type = value_info.type.tensor_type
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    except (KeyError, TypeError, ValueError):
        dtype = np.dtype(object)
    shape: list[Dim] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            shape.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            shape.append(dim.dim_param)
        else:
            shape.append(None)
    return TensorSpec(value_info.name, tuple(shape), dtype)


def inspect_onnx(path: str | Path, *, allowed_opsets: range = SUPPORTED_OPSETS) -> ModelInfo:
    """Read and check an ONNX model; raises :class:`ModelError` saying what is wrong and what to do.

    Refused: a missing file or folder, a file that is not ONNX, a truncated or invalid model, external
    data outside the model's folder or missing, a default-domain opset outside ``allowed_opsets``, and a
    graph without inputs or outputs. External weights are never loaded here, only hashed.
    """
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not an ONNX model file; give the .onnx file inside it")
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    refuse_lfs_pointer(path)
    model = _load_proto(path)
    external = _external_files(model, path)
    _check_model(path, model)
    opsets = {("" if o.domain in _DEFAULT_DOMAINS else o.domain): int(o.version) for o in model.opset_import}
    opset = _default_opset(path, opsets, allowed_opsets)
    inputs, outputs = _graph_io(path, model.graph)
    ops = _op_counts(model.graph)
    digest, size = _fingerprint(path, external)
    return ModelInfo(
        path=path,
        sha256=digest,
        opset=opset,
        ir_version=int(model.ir_version),
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=inputs,
        outputs=outputs,
        metadata={p.key: p.value for p in model.metadata_props},
        ops=ops,
        has_qdq=any(op.rpartition(":")[2] in _QDQ_OPS for op in ops),
        external_data=external,
        size_bytes=size,
        opsets=opsets,
    )


def _check_model(path: Path, model) -> None:  # model: onnx.ModelProto, external data not loaded
    """Run the ONNX checker (by path, so that external data, already validated, is found next to the model).

    Nodes out of topological order (fp16 converters append their input casts at the end, e.g. Ultralytics
    ``half=True``) are accepted when the graph, sorted, passes the checker: onnxruntime and TensorRT sort it.
    """
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError) as e:
        if _UNSORTED in str(e) and _passes_when_sorted(path, model):
            log.debug("%s: nodes are not in topological order; accepted (sorted, the graph is valid)", path)
            return
        raise ModelError(
            f"{path}: the ONNX checker rejects this model ({str(e).strip().splitlines()[0][:300]}); it is "
            "truncated or invalid. Export it again (and check it with onnx.checker.check_model)"
        ) from None


def _passes_when_sorted(path: Path, model) -> bool:  # model: onnx.ModelProto
    """True when ``model`` with its main graph's nodes topologically sorted passes the ONNX checker."""
    import onnx
    import onnx.external_data_helper

    ordered = onnx.ModelProto()
    ordered.CopyFrom(model)
    graph = ordered.graph
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    nodes = _topological_order(list(graph.node), available)
    del graph.node[:]
    graph.node.extend(nodes)
    try:
        onnx.external_data_helper.load_external_data_for_model(ordered, str(path.parent))
        onnx.checker.check_model(ordered)
    except (onnx.checker.ValidationError, ValueError, OSError):
        return False
    return True


def _topological_order(nodes: list, available: set[str]) -> list:  # onnx.NodeProto
    """``nodes`` reordered so that each comes after the producers of its inputs (stable; unresolvable ones last)."""
    ordered: list = []
    pending = nodes
    while pending:
        waiting = []
        for node in pending:
            if all(name in available for name in node.input if name):
                ordered.append(node)
                available.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            return ordered + waiting
        pending = waiting
    return ordered


def _default_opset(path: Path, opsets: dict[str, int], allowed_opsets: range) -> int:
    opset = opsets.get("")
    if opset is None:
        raise ModelError(f"{path}: the model imports no default ONNX opset; export it again with an opset "
                         f"between {allowed_opsets.start} and {allowed_opsets.stop - 1}")
    if opset not in allowed_opsets:
        raise ModelError(
            f"{path}: opset {opset} is not supported (lepton-edge supports opsets {allowed_opsets.start}.."
            f"{allowed_opsets.stop - 1}); re-export with e.g. torch.onnx.export(..., opset_version=17) or "
            "convert it with onnx.version_converter.convert_version(model, 17)"
        )
    return opset


def _graph_io(path: Path, graph) -> tuple[list[TensorSpec], list[TensorSpec]]:  # graph: onnx.GraphProto
    """The graph's inputs (initializers excluded) and outputs; refused when either is empty."""
    initializers = {t.name for t in graph.initializer}
    inputs = [_spec(v) for v in graph.input if v.name not in initializers]
    outputs = [_spec(v) for v in graph.output]
    if not inputs:
        raise ModelError(f"{path}: the model graph has no inputs; export it with at least one input tensor")
    if not outputs:
        raise ModelError(f"{path}: the model graph has no outputs; export it with at least one output tensor")
    return inputs, outputs


def _op_counts(graph) -> dict[str, int]:  # graph: onnx.GraphProto
    ops: Counter[str] = Counter()
    for node in _all_nodes(graph):
        domain = "" if node.domain in _DEFAULT_DOMAINS else node.domain
        ops[f"{domain}:{node.op_type}" if domain else node.op_type] += 1
    return dict(ops)


def _fingerprint(path: Path, external: list[str]) -> tuple[str, int]:
    """:attr:`ModelInfo.sha256` and :attr:`ModelInfo.size_bytes` of the model at ``path``."""
    size = path.stat().st_size
    digest = sha256_file(path)
    if external:
        combined = hashlib.sha256(digest.encode())
        for location in external:
            size += (path.parent / location).stat().st_size
            combined.update(f"\n{location}\n{sha256_file(path.parent / location)}".encode())
        digest = combined.hexdigest()
    return digest, size


# ---------------------------------------------------------------------------------------------------------
# Operator support


def _cpu_kernels() -> dict[tuple[str, str], list[tuple[int, int]]]:
    """(domain, op) -> version ranges of onnxruntime's CPU kernels, from onnxruntime's own registry."""
    from onnxruntime.capi import _pybind_state

    kernels: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for kernel in _pybind_state.get_all_opkernel_def():
        if kernel.provider == "CPUExecutionProvider":
            domain = "" if kernel.domain in _DEFAULT_DOMAINS else kernel.domain
            kernels.setdefault((domain, kernel.op_name), []).append(tuple(kernel.version_range))
    return kernels


def _since_version(op: str, domain: str, opset: int) -> int:
    """The version of ``op``'s schema in effect at ``opset`` (what kernels are registered against)."""
    import onnx.defs

    try:
        return int(onnx.defs.get_schema(op, opset, domain).since_version)
    except Exception:  # unknown to this onnx package (contrib or custom domains): use the opset itself
        return opset


_NOT_IMPLEMENTED = re.compile(r"Could not find an implementation for (\w+)\((\d+)\)")


GRAPH_LEVEL_OPS = frozenset({"Constant"})
"""Ops onnxruntime resolves while loading the graph (no kernel in the registry, always supported)."""


def unsupported_ops(info: ModelInfo, target: str) -> list[str]:
    """Op types in the model that ``target`` cannot run, sorted ([] when all are supported).

    For ``onnxruntime-cpu`` the op set comes from onnxruntime's kernel registry at the model's opsets;
    when every op has a kernel, a session is created once so that a missing type-specific kernel is
    caught too (onnxruntime's NOT_IMPLEMENTED error is translated into the op name).
    """
    if target not in TARGETS:
        raise ConfigError(f"unknown target {target!r} for the op support check; known: {', '.join(TARGETS)}")
    kernels = _cpu_kernels()
    missing: set[str] = set()
    for key in info.ops:
        domain, _, op = key.rpartition(":")
        if not domain and op in GRAPH_LEVEL_OPS:
            continue
        opset = info.opsets.get(domain, 1 if domain else info.opset)
        version = _since_version(op, domain, opset)
        ranges = kernels.get((domain, op), [])
        if not any(start <= version <= end for start, end in ranges):
            missing.add(key)
    if missing:
        return sorted(missing)
    return _session_check(info)


def explain_unsupported(ops: list[str]) -> str:
    """Op keys from :func:`unsupported_ops` in words: custom-domain ones named as custom operators, with why."""
    standard = [key for key in ops if ":" not in key]
    advice = [custom_op_reason(*key.rsplit(":", 1)) for key in ops if ":" in key]
    if standard:
        advice.insert(0, f"re-export the model without {'them' if len(standard) == len(ops) else ', '.join(standard)}"
                         " (another opset, or simpler layers)")
    return f"onnxruntime cannot run these operators: {', '.join(ops)}; {'; '.join(advice)}"


def runtime_warnings(info: ModelInfo) -> list[str]:
    """What the runtime will not do with this model on its own: several inputs, outputs it cannot decode."""
    warnings = []
    if len(info.inputs) > 1:
        names = ", ".join(spec.name for spec in info.inputs)
        warnings.append(f"the model has {len(info.inputs)} inputs ({names}): give the ones not recorded (a .npz "
                        "with one array per input) or preprocessed from images as constants or state (model.inputs, "
                        "--constant, --state; docs/sensors.md)")
    try:
        task = infer_task(info.outputs, info.metadata)
    except ModelError as e:
        return [*warnings, str(e)]
    if task == "raw" and info.metadata.get(TASK_KEY) != "raw":  # raw on purpose is not worth a warning
        shapes = ", ".join(f"{spec.name} {list(spec.shape)}" for spec in info.outputs)
        warnings.append(f"the runtime cannot decode these outputs ({shapes}) as a classifier or detector; "
                        "results pass through raw. Set postprocess.type (or model metadata lepton.task) if "
                        "they are one of the supported layouts")
    return warnings


def _session_check(info: ModelInfo) -> list[str]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(str(info.path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises several unrelated types for bad models
        text = str(e)
        found = _NOT_IMPLEMENTED.findall(text)
        if found:
            return sorted({op for op, _version in found})
        raise ModelError(
            f"{info.path}: onnxruntime cannot load this model: {text.strip()[:500]}"
        ) from None
    return []


def describe_model(info: ModelInfo) -> dict:
    """A JSON-ready summary of :class:`ModelInfo` (for ``inspect`` and manifests)."""

    def spec(s: TensorSpec) -> dict:
        return {"name": s.name, "shape": list(s.shape), "dtype": str(s.dtype)}

    return {
        "path": str(info.path),
        "sha256": info.sha256,
        "opset": info.opset,
        "opsets": info.opsets,
        "ir_version": info.ir_version,
        "producer": info.producer,
        "inputs": [spec(s) for s in info.inputs],
        "outputs": [spec(s) for s in info.outputs],
        "metadata": info.metadata,
        "ops": dict(sorted(info.ops.items())),
        "has_qdq": info.has_qdq,
        "external_data": info.external_data,
        "size_bytes": info.size_bytes,
    }


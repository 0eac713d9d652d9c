"""QDQ export: the table's ranges baked into a QuantizeLinear/DequantizeLinear ONNX model for onnxruntime."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lepton_edge.core.errors import ConfigError, LeptonError, ModelError
from lepton_edge.core.fileio import atomic_write
from lepton_edge.engines.calibration.table import CalibrationTable, other_model_message
from lepton_edge.engines.onnx_tools import ModelInfo, inspect_onnx


class _QuietQuantizer(logging.Filter):
    """onnxruntime's quantizer logs on the root logger (advice about its own pre-processing tool, notes per
    tensor or node); a build may quantize a model dozens of times, so its records are dropped while it runs
    (its failures raise)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "/onnxruntime/quantization/" not in record.pathname.replace("\\", "/")


def _opset_13(model, model_path: Path, opset: int):  # onnx.ModelProto -> onnx.ModelProto
    """Per-channel QuantizeLinear/DequantizeLinear (their ``axis``) need opset 13; convert older models.
    The converter keeps tensor names, so the table's ranges still apply."""
    import onnx

    try:
        return onnx.version_converter.convert_version(model, 13)
    except Exception as e:  # the converter raises several types for graphs it cannot convert
        raise ModelError(
            f"{model_path}: per-channel quantization needs opset 13 and converting this opset {opset} "
            f"model failed ({e}); re-export it with opset 13 or newer, or "
            "quantize per tensor (--per-tensor)"
        ) from None


_WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


def _float_tail(model) -> list[str]:  # model: onnx.ModelProto (nodes named)
    """Names of the nodes after the last weighted layer (Conv, MatMul, ...) that feed none: the decode
    tail (box arithmetic, concatenation of boxes with scores, softmax). Quantizing it gains little time
    and can ruin results, e.g. one uint8 scale for pixel coordinates and 0..1 scores in one tensor."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    feeds_weighted: dict[str, bool] = {}
    for node in reversed(model.graph.node):  # ONNX nodes are topologically sorted
        feeds_weighted[node.name] = any(
            c.op_type in _WEIGHTED_OPS or feeds_weighted.get(c.name, False)
            for out in node.output for c in consumers.get(out, ())
        )
    return [n.name for n in model.graph.node if n.op_type not in _WEIGHTED_OPS and not feeds_weighted[n.name]]


def quantize_qdq(model_path: Path, table: CalibrationTable, out_path: Path, *, per_channel: bool = True,
                 float_tail: bool = True, keep_float: Sequence[str] = (), symmetric: bool = False) -> Path:
    """Write a QDQ-quantized copy of ``model_path`` whose activation scales come from ``table``.

    Activations are uint8 (asymmetric), weights int8 in 7 bits (-64..64, per output channel unless
    ``per_channel`` is False): the fast combination on x86 and ARM in onnxruntime. Full 8-bit weights would be
    exact only on CPUs with VNNI: without it, onnxruntime's u8s8 kernels add pairs of products in 16 bits
    (``vpmaddubsw``), and 2 x 255 x 127 overflows them, so the same artifact would answer differently on the
    machine that runs it than on the one that built it. The ranges are handed
    to onnxruntime's ``quantize_static`` as its calibration cache, so no second calibration runs. With
    ``float_tail`` the cheap decode nodes after the last weighted layer stay in float; the nodes named in
    ``keep_float`` (mixed precision, see ``sensitivity``) stay in float too.

    ``symmetric`` writes what TensorRT takes instead: int8 activations and full 8-bit int8 weights, every zero
    point 0 (scale ``max(|lo|, |hi|) / 127``). TensorRT quantizes symmetrically only: its ONNX parser refuses
    uint8 Q/DQ (8.6) or non-zero zero points (10+), and a uint8 zero point of 0 would put ``rmax / 255`` scales
    on an int8 grid, clipping everything above about ``rmax / 2``. Biases stay float (TensorRT's Q/DQ are int8).
    """
    return QdqQuantizer(model_path, table, per_channel=per_channel, float_tail=float_tail,
                        symmetric=symmetric).write(out_path, keep_float)


class QdqQuantizer:
    """One fp32 model and its table, prepared once (opset, node names) and quantized as often as asked, each time
    with other nodes kept in float: the build's mixed-precision search quantizes one model dozens of times."""

    def __init__(self, model_path: Path, table: CalibrationTable, *, per_channel: bool = True,
                 float_tail: bool = True, symmetric: bool = False) -> None:
        import onnx

        self.model_path, self.table, self.per_channel = Path(model_path), table, per_channel
        self.symmetric = symmetric
        info = inspect_onnx(self.model_path)
        _check_can_quantize(self.model_path, info, table)
        self.ranges = _ranges(table)
        model = onnx.load(str(self.model_path))
        if per_channel and info.opset < 13:
            model = _opset_13(model, self.model_path, info.opset)
        _name_unnamed_nodes(model)
        self.model = model
        """The prepared fp32 model: every node named as the quantizer sees it (read only)."""
        self.tail: list[str] = _float_tail(model) if float_tail else []
        """Nodes every quantization keeps in float (the decode tail)."""

    def write(self, out_path: Path, keep_float: Sequence[str] = (), *, check: bool = True) -> Path:
        """Quantize into ``out_path`` (atomically) with the tail and ``keep_float`` in float; returns the path.
        With ``check`` the result is loaded once in onnxruntime first."""
        import onnx

        out_path = Path(out_path)
        unknown = sorted(set(keep_float) - {n.name for n in self.model.graph.node})
        if unknown:
            raise ConfigError(f"{self.model_path}: no node(s) named {unknown[:5]} to keep in float")
        excluded = list(dict.fromkeys([*self.tail, *keep_float]))
        model = onnx.ModelProto()
        model.CopyFrom(self.model)  # the quantizer edits the model it is given
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="lepton-qdq-") as tmp:
            staged = _quantize_static(model, self.model_path, self.ranges, Path(tmp), self.per_channel, excluded,
                                      self.symmetric)
            _record_quantization(staged, self.table, self.per_channel, len(excluded), list(keep_float),
                                 self.symmetric)
            if check:
                _check_loads(staged, self.model_path)
            atomic_write(out_path, staged.read_bytes())
        return out_path


def _check_can_quantize(model_path: Path, info: ModelInfo, table: CalibrationTable) -> None:
    """The table was made for this fp32 model, and this onnxruntime can take its ranges."""
    import onnxruntime as ort
    from onnxruntime.quantization import quantize_static

    if info.sha256 != table.model_sha256:
        raise ConfigError(other_model_message(f"calibration table for {model_path}", table, info.sha256))
    if info.has_qdq:
        raise ModelError(f"{model_path}: the model is already quantized; give the fp32 model")
    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise ModelError(
            f"QDQ export needs an onnxruntime whose quantize_static takes calibration_cache_path (installed: "
            f"{ort.__version__}); upgrade it with `pip install -U onnxruntime`"
        )


def _ranges(table: CalibrationTable):  # -> onnxruntime.quantization.calibrate.TensorsData
    """The table's ranges as onnxruntime's calibration result."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    return TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
        for name, (lo, hi) in table.ranges.items()
    })


def _name_unnamed_nodes(model) -> None:  # model: onnx.ModelProto
    """Name every unnamed node ``<op>_<index>``: nodes are excluded from quantization by name."""
    used = {n.name for n in model.graph.node}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def _quantize_static(model, model_path: Path, ranges, folder: Path, per_channel: bool,
                     keep_float: list[str], symmetric: bool) -> Path:  # model: onnx.ModelProto; ranges: TensorsData
    """Run onnxruntime's quantizer on ``model`` with ``ranges`` as its calibration cache, in ``folder``;
    returns the quantized model's path."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    cache = folder / "ranges.json"
    save_tensors_data(ranges, cache)
    staged = folder / "model.int8.onnx"
    quiet = _QuietQuantizer()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                model, str(staged), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
                per_channel=per_channel, reduce_range=not symmetric,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                calibration_cache_path=cache, nodes_to_exclude=keep_float,
                # TensorRT: no int32-quantized biases (its Q/DQ are int8); it fuses the float bias itself.
                extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                               "QuantizeBias": not symmetric},
            )
    except LeptonError:
        raise
    except Exception as e:  # the quantizer raises many types for models it cannot handle
        raise ModelError(f"{model_path}: onnxruntime's quantizer failed: {type(e).__name__}: {e}") from None
    finally:
        root.removeFilter(quiet)
    return staged


def _record_quantization(staged: Path, table: CalibrationTable, per_channel: bool, float_nodes: int,
                         mixed: list[str], symmetric: bool) -> None:
    """Add the ``lepton.quantization`` metadata entry to the quantized model at ``staged``."""
    import onnx

    quantized = onnx.load(str(staged))
    entry = quantized.metadata_props.add()
    entry.key = "lepton.quantization"
    entry.value = json.dumps({
        "format": "qdq", "activations": "int8 (symmetric)" if symmetric else "uint8",
        "weights": ("int8" if symmetric else "int8 (7-bit)") + (" per-channel" if per_channel else ""),
        "method": table.method, "source_model_sha256": table.model_sha256,
        "dataset_sha256": table.dataset_sha256, "float_nodes": float_nodes,
        **({"mixed_precision_nodes": mixed} if mixed else {}),
    }, sort_keys=True)
    onnx.save(quantized, str(staged))


def _check_loads(staged: Path, model_path: Path) -> None:
    import onnxruntime as ort

    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        ort.InferenceSession(str(staged), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises several unrelated types
        raise ModelError(f"{model_path}: the quantized model does not load in onnxruntime: {e}") from None

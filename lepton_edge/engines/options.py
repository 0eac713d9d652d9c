"""The build parameters: one typed set shared by the artifact builder, ``precision: auto`` and ``lepton-edge build``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from lepton_edge.config.pipeline import InputsConfig, PreprocessConfig
from lepton_edge.engines.calibration import CalibrationTable, Method

MAX_BATCH = 256
"""Largest ``--max-batch`` of a TensorRT profile (activation memory grows with it)."""


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrtOptions(_Options):
    """TensorRT builder options."""

    workspace_mb: int = Field(1024, gt=0, description="Builder workspace limit in MiB.")
    dla_core: int | None = Field(None, ge=0, description="Run on this DLA core (Jetson), GPU fallback on.")
    device: int = Field(0, ge=0, description="CUDA device the engine is built on, and whose facts the manifest "
                        "records (the runtime's backend.device).")
    timing_cache: Path | None = Field(None, description="Timing cache file, read if present and updated.")
    profiles: list[dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]] | None = Field(
        None, description="Optimization profiles: input -> (min, opt, max) shapes. Default: one profile with the image "
        "input's height and width at the size the engine is built for, a dynamic batch 1..max_batch, other dynamic "
        "dims 1.")
    opt_batch: int | None = Field(
        None, ge=1, le=MAX_BATCH, description="Default profile: the batch TensorRT tunes for, e.g. the number of "
        "streams feeding the model (at most max_batch); None: 1.")
    max_batch: int | None = Field(
        None, ge=1, le=MAX_BATCH, description="Default profile: largest batch of a model with a dynamic batch (min "
        "and opt stay 1, what the runtime feeds); the engine keeps its batch dimension dynamic. None: the batch the "
        "model was exported for (Ultralytics `batch` metadata), else 1.")
    int8_mode: Literal["qdq", "legacy-cache"] = Field(
        "qdq", description="qdq: explicit quantization from the QDQ model; legacy-cache: implicit "
        "calibration replaying a TensorRT calibration cache written from the table (TensorRT <= 10).")


class CalibrationOptions(_Options):
    """How to calibrate when the build calibrates itself (unset: the calibrate defaults)."""

    method: Method | None = Field(None, description="Range method: minmax, entropy or percentile.")
    samples: int | None = Field(None, ge=1, description="Data-set items used, chosen at random.")
    seed: int | None = Field(None, description="Seed of the random choice of items.")
    percentile: float | None = Field(None, gt=0, le=100, description="Percentile kept (method percentile).")


class BuildOptions(_Options):
    """What to build from an ONNX model, and the gate it must pass."""

    target: str = Field("onnxruntime-cpu", description="onnxruntime-cpu, onnxruntime-<provider> or tensorrt.")
    precision: Literal["fp32", "fp16", "int8", "auto"] = Field(
        "fp32", description="Engine precision; auto builds every candidate and keeps the fastest that passes.")
    calibration: CalibrationTable | Path | None = Field(
        None, description="int8: a calibration table, or its file from `lepton-edge calibrate`.")
    calibration_data: str | None = Field(
        None, description="int8 without a table: calibrate from this image folder, video or .npy/.npz recording.")
    calibration_options: CalibrationOptions = Field(
        default_factory=CalibrationOptions, description="How to calibrate from calibration_data.")
    validation_data: Path | None = Field(
        None, description="Labelled held-out data for the accuracy gate; none: no gate.")
    validation_samples: int | None = Field(None, ge=1, description="Use only the first N validation samples.")
    max_accuracy_drop: float = Field(
        1.0, description="Largest allowed drop against fp32, in points of top-1 or mAP@0.5.")
    fidelity: bool = Field(
        True, description="int8: run the label-free fidelity gate against the fp32 model (held-out calibration "
        "items, else the validation data, else the calibration data); false accepts the engine unchecked.")
    fidelity_samples: int = Field(64, ge=1, le=10000, description="Most samples the fidelity gate compares.")
    min_fidelity_map: float = Field(
        0.90, ge=0.0, le=1.0, description="Detectors: least mAP@0.5 against the fp32 model's own detections.")
    min_boxes_kept: float = Field(
        0.90, ge=0.0, le=1.0, description="Detectors: least fraction of the fp32 model's boxes still reported.")
    min_top1_agreement: float = Field(
        0.97, ge=0.0, le=1.0, description="Classifiers: least fraction of samples with the fp32 top-1 class.")
    min_output_agreement: float = Field(
        0.90, ge=0.0, le=1.0, description="Raw models: least thresholded agreement of every output.")
    mixed_precision: Literal["auto", "off"] = Field(
        "auto", description="int8 failing the fidelity gate: auto keeps its most sensitive layers in float (the "
        "fewest that pass, ranked on held-out calibration items); off fails the build.")
    max_float_layers: int | None = Field(
        None, ge=0, le=100000, description="Mixed precision: most layers (a weighted node with the nodes after it) "
        "kept in float; none: a quarter of the quantized layers, rounded up.")
    sensitivity_samples: int = Field(
        8, ge=1, le=256, description="Mixed precision: calibration items each layer's sensitivity is measured on "
        "(held-out ones first).")
    preprocess: PreprocessConfig | None = Field(
        None, description="Preprocessing for calibration and validation (default: the model's metadata).")
    batch: Annotated[int, Field(ge=1, le=MAX_BATCH)] | Literal["dynamic"] | None = Field(
        None, description="The image input's batch axis in the engine: dynamic (any number of frames per call; "
        "TensorRT profiles 1..trt.max_batch) or a fixed N, set in the ONNX before calibration, quantization and the "
        "engine build; refused, naming the node, when the graph hard-codes its batch. None: as exported.")
    trt: TrtOptions = Field(default_factory=TrtOptions, description="TensorRT builder options.")
    inputs: InputsConfig | None = Field(
        None, description="Models with several inputs: constants, state fed back, recorded arrays (model.inputs); "
        "calibration and the gates feed the model this way.")

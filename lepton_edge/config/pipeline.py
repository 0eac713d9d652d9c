"""Schemas of the pipeline's parts: model, backend, source, preprocessing, postprocessing, sinks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from lepton_edge.config.base import Strict
from lepton_edge.config.clips import ClipsConfig

MAX_ARTIFACT_VERSION = 2**53 - 1
"""Highest artifact version (exact in JSON numbers everywhere)."""
MAX_ARTIFACT_EXPIRES = 2**40
"""Latest expiry accepted, in unix seconds (year 36812: bounded, never a real limit)."""
ARTIFACT_TARGET_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$"
"""An artifact target: a device group or model name, 1..128 characters."""


class ArtifactRef(Strict):
    """A model artifact to download, verify and activate (lepton_edge.device.updates)."""

    url: str = Field(
        description="Where to download it: https://, http:// or file:///absolute/path. A single model file "
        "(.onnx, .plan) or a .tar of an artifact directory from `lepton-edge build`."
    )
    size: int = Field(gt=0, description="Exact size in bytes; a longer or shorter download is refused.")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="sha256 of the file, 64 hex digits.")
    version: int | None = Field(
        None,
        ge=1,
        le=MAX_ARTIFACT_VERSION,
        description="Release number of this artifact for its target, signed; a device refuses versions "
        "below the highest it has accepted for the target (anti-rollback).",
    )
    target: str | None = Field(
        None,
        pattern=ARTIFACT_TARGET_PATTERN,
        description="Who the artifact is for (a device group or model name), signed; a device accepts only "
        "targets listed in its local agent.artifact_targets.",
    )
    expires: int | None = Field(
        None,
        ge=0,
        le=MAX_ARTIFACT_EXPIRES,
        description="Unix time (s) after which the signed reference is refused, signed.",
    )
    key_id: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{16}$",
        description="Id of the release key that signed it (16 hex digits, printed by `lepton-edge keygen`).",
    )
    signature: str | None = Field(
        None,
        description="Base64 ed25519 signature of the metadata (version, target, URL path, size, sha256, "
        "expires; `lepton-edge sign`), checked with the key `key_id` of agent.artifact_public_keys. Required "
        "unless unsigned artifacts are explicitly allowed.",
    )

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, url: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https", "file"):
            raise ValueError(f"url must start with https://, http:// or file://, got {url!r}")
        local = parts.netloc in ("", "localhost") and parts.path.startswith("/")
        if parts.scheme == "file" and not local:
            raise ValueError(f"file URLs need an absolute path (file:///dir/model.onnx), got {url!r}")
        if parts.scheme != "file" and not parts.hostname:
            raise ValueError(f"url has no host: {url!r}")
        return url

    @field_validator("sha256")
    @classmethod
    def _lower_hex(cls, digest: str) -> str:
        return digest.lower()

    @field_validator("signature")
    @classmethod
    def _base64_ed25519(cls, signature: str | None) -> str | None:
        import base64
        import binascii

        if signature is None:
            return None
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("signature is not valid base64 (copy it from `lepton-edge sign`)") from None
        if len(raw) != 64:
            raise ValueError(f"signature must decode to 64 bytes (ed25519), got {len(raw)}")
        return signature


MAX_TENSOR_NAME = 256
"""Longest model input, output or recorded array name accepted in a config."""
MAX_CONSTANT_VALUES = 4096
"""Most numbers in one constant input (a config arrives over the network: it stays small)."""
MAX_CONSTANT_DEPTH = 8
"""Deepest nesting of a constant's lists (its rank)."""
MAX_NAMED_INPUTS = 64
"""Most constants, state pairs or recorded-array mappings in a config."""
MAX_STATE_VALUES = 1 << 20
"""Most numbers in one state tensor's initial zeros."""

TensorName = Annotated[str, Field(min_length=1, max_length=MAX_TENSOR_NAME, pattern=r"^[^\x00-\x1f\x7f]+$")]
"""A model input or output name, or a recording's array name: printable, 1..256 characters."""

ConstantValue = Annotated[
    float | int | list[Any],
    Field(description="A number, or nested lists of numbers (rectangular, at most 4096 numbers, depth 8)."),
]


def _count_numbers(value: Any, depth: int = 0) -> int:
    """The numbers in a constant (nested lists of finite numbers); ValueError for anything else."""
    if isinstance(value, bool) or value is None or isinstance(value, str | dict):
        raise ValueError(f"constants hold numbers or lists of numbers, got {type(value).__name__} {value!r:.40}")
    if isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 63):
            raise ValueError(f"integer {value} does not fit in 64 bits")
        return 1
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"constants must be finite numbers, got {value}")
        return 1
    if isinstance(value, list):
        if depth >= MAX_CONSTANT_DEPTH:
            raise ValueError(f"constant nested deeper than {MAX_CONSTANT_DEPTH} lists")
        if not value:
            raise ValueError("empty list in a constant")
        total = 0
        for item in value:
            total += _count_numbers(item, depth + 1)
            if total > MAX_CONSTANT_VALUES:
                raise ValueError(f"constant holds more than {MAX_CONSTANT_VALUES} numbers")
        return total
    raise ValueError(f"constants hold numbers or lists of numbers, got {type(value).__name__}")


class StateConfig(Strict):
    output: TensorName = Field(description="Model output holding the state after a frame (Silero VAD: stateN).")
    input: TensorName = Field(description="Model input it is fed back to on the next frame (Silero VAD: state).")
    shape: list[Annotated[int, Field(ge=1, le=65536)]] | None = Field(
        None, max_length=8,
        description="Shape of the initial zeros, needed only when the input has dynamic dimensions other than a "
        "batch (default: the input's shape with dynamic dimensions 1); at most 8 dims and 1048576 values.",
    )

    @field_validator("shape")
    @classmethod
    def _bounded(cls, shape: list[int] | None) -> list[int] | None:
        if shape is not None and math.prod(shape) > MAX_STATE_VALUES:
            raise ValueError(f"state shape {shape} holds more than {MAX_STATE_VALUES} values")
        return shape


class InputsConfig(Strict):
    """Where each model input comes from, for models with several inputs (sensor, multi-input, stateful)."""

    recorded: dict[TensorName, TensorName] = Field(
        default_factory=dict, max_length=MAX_NAMED_INPUTS,
        description="Model input -> the array of a .npz recording that feeds it (one frame per first-axis "
        "index). Inputs not listed, and not constant, state or image, read the array of their own name.",
    )
    constants: dict[TensorName, ConstantValue] = Field(
        default_factory=dict, max_length=MAX_NAMED_INPUTS,
        description="Model input -> a value fed with every frame, cast to the input's dtype (Silero VAD: "
        "{sr: 16000}); a number or nested lists, at most 4096 numbers each.",
    )
    state: list[StateConfig] = Field(
        default_factory=list, max_length=MAX_NAMED_INPUTS,
        description="Outputs fed back to inputs between frames (recurrent state); zeros before the first frame. "
        "A model with state runs every frame in order: live sources do not drop frames for it.",
    )
    state_reset: Literal["on_reopen", "every_frame", "never"] = Field(
        "on_reopen",
        description="When state goes back to zeros: on_reopen (the source opens again: loop, reconnect, a new "
        "source), every_frame (no memory, frames may be dropped again), or never (only a new model resets it).",
    )
    image: TensorName | None = Field(
        None,
        description="The input image sources are preprocessed into, for models with extra inputs (image + "
        "metadata: the rest are constants or state); default: the only input not otherwise fed.",
    )

    @field_validator("constants", mode="before")
    @classmethod
    def _small_constants(cls, constants: Any) -> Any:
        for name, value in constants.items() if isinstance(constants, dict) else ():
            try:
                _count_numbers(value)
            except ValueError as e:
                raise ValueError(f"constant {name!r}: {e}") from None
        return constants

    @model_validator(mode="after")
    def _each_input_fed_once(self) -> InputsConfig:
        roles: dict[str, str] = {}
        outputs: set[str] = set()
        pairs = [(name, "recorded") for name in self.recorded] + [(name, "constant") for name in self.constants]
        pairs += [(s.input, "state") for s in self.state] + ([(self.image, "image")] if self.image else [])
        for name, role in pairs:
            if name in roles:
                raise ValueError(f"input {name!r} is given twice ({roles[name]} and {role}); feed each input once")
            roles[name] = role
        for s in self.state:
            if s.output in outputs:
                raise ValueError(f"state output {s.output!r} is fed back twice")
            outputs.add(s.output)
        return self


MAX_BATCH = 64
"""Most frames one batched inference may take."""


class BatchConfig(Strict):
    """How a model's batcher gathers frames of the streams feeding it (docs/streams.md)."""

    max_batch: int | None = Field(
        None, ge=1, le=MAX_BATCH,
        description="Most frames in one inference. None: the engine's fixed batch size, or for a dynamic batch "
        "axis the number of streams feeding the model (at most 16). 1 runs the streams one after another.",
    )
    timeout_ms: float = Field(
        10.0, ge=0, le=1000,
        description="Once a frame waits, how long the batcher waits for the other streams' frames before it runs a "
        "smaller batch; a stalled or reconnecting stream is never waited for.",
    )


class ModelConfig(Strict):
    path: Path = Field(description="ONNX model (or built artifact directory) to run.")
    artifact: ArtifactRef | None = Field(
        None,
        description="Download this artifact, verify it and run it instead of `path` (needs the agent "
        "section); the previous one is kept for rollback.",
    )
    labels: Path | list[str] | None = Field(
        None,
        description="Class names: a text file with one label per line, or an inline list. "
        "Defaults to the labels in the model's metadata, if any.",
    )
    task: Literal["auto", "detect", "segment", "pose", "obb", "classify", "raw"] = Field(
        "auto",
        description="What the model does: detect, segment (boxes and masks), pose (boxes and keypoints), obb "
        "(oriented boxes), classify or raw; `auto` reads the model metadata and output shapes.",
    )
    precision: Literal["as-is", "fp32", "fp16", "int8", "auto"] = Field(
        "as-is",
        description="`as-is` runs `path` as given (an ONNX file or a built artifact directory). Any other value "
        "treats `path` as an ONNX model and runs the engine built from it at that precision, from the engine "
        "cache (built on first use). `auto` builds the candidate precisions, measures them here and keeps the "
        "fastest one that passes the accuracy gate.",
    )
    calibration: Path | None = Field(
        None, description="Calibration table (JSON from `lepton-edge calibrate`) for int8 builds."
    )
    calibration_data: str | None = Field(
        None, description="Data set to calibrate from when int8 is built without a table: an image folder, "
        "a video, or a .npy/.npz recording."
    )
    validation_data: Path | None = Field(
        None, description="Held-out labelled data for the accuracy gate and `precision: auto` "
        "(see docs/build.md for the formats)."
    )
    max_accuracy_drop: float = Field(
        1.0, ge=0, le=100, description="Largest allowed drop against the fp32 model, in points of top-1 accuracy "
        "(classifiers) or mAP@0.5 (detectors)."
    )
    cache_dir: Path | None = Field(
        None, description="Engine cache folder; default $CACHE_DIRECTORY/engines under systemd, else "
        "~/.cache/lepton-edge/engines."
    )
    inputs: InputsConfig = Field(
        default_factory=InputsConfig,
        description="Where each input comes from for models with several inputs: recorded arrays, constants, "
        "state fed back from outputs, the image (docs/sensors.md).",
    )
    batch: BatchConfig = Field(
        default_factory=BatchConfig,
        description="Cross-stream batching of the model when several streams feed it (docs/streams.md).",
    )


class OnnxRuntimeBackendConfig(Strict):
    type: Literal["onnxruntime"] = Field("onnxruntime", description="Run the model with onnxruntime.")
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="Execution providers in order of preference; unavailable ones are skipped with a warning.",
    )
    intra_op_threads: int = Field(
        0, ge=0, le=1024, description="Threads inside one operator; 0 picks the number of physical cores."
    )
    inter_op_threads: int = Field(1, ge=1, le=1024, description="Threads running independent operators in parallel.")
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="onnxruntime graph optimisation level."
    )
    allow_spinning: bool | None = Field(
        None,
        description="Let idle intra-op threads spin. None: spin in a bare loop, sleep inside the pipeline "
        "where other stages need the cores.",
    )
    warmup_runs: int = Field(
        3, ge=0, le=1000, description="Inference runs on a zero tensor before the first frame (at most 1000)."
    )


class TensorRTBackendConfig(Strict):
    type: Literal["tensorrt"] = Field(description="Run a serialized TensorRT engine (needs TensorRT and CUDA).")
    device: int = Field(0, ge=0, description="CUDA device index.")
    cuda_graph: bool = Field(False, description="Capture inference in a CUDA graph and replay it.")
    warmup_runs: int = Field(3, ge=0, le=1000, description="Inference runs before the first frame (at most 1000).")
    dla_core: int | None = Field(
        None, ge=0, description="DLA core (Jetson) a bare engine file was built for; artifacts use the core their "
        "manifest records. null: the GPU.")
    cuda_package: Literal["auto", "cuda-python", "pycuda"] = Field(
        "auto", description="CUDA Python package for memory and streams: auto (cuda-python if installed, else "
        "pycuda), or one of them. CUDA graphs need cuda-python.")


BackendConfig = Annotated[OnnxRuntimeBackendConfig | TensorRTBackendConfig, Field(discriminator="type")]


class ReconnectConfig(Strict):
    initial_backoff_s: float = Field(
        0.5, gt=0, le=3600, description="First wait before reopening a failed live source (at most an hour)."
    )
    max_backoff_s: float = Field(
        10.0, gt=0, le=3600, description="Cap of the exponential backoff between reopen attempts (at most an hour)."
    )
    stall_timeout_s: float = Field(
        5.0, gt=0, le=3600, description="A live source that delivers no frame for this long is closed and reopened."
    )
    max_attempts: int = Field(
        0, ge=0, le=1_000_000, description="Give up after this many failed reopen attempts; 0 retries forever."
    )


class SourceConfig(Strict):
    uri: str = Field(
        description="Where frames come from: a video or image file or folder, rtsp://, http(s)://, /dev/videoN "
        "or v4l2://N, csi://N, gst:<pipeline>, synthetic://shapes?fps=30, or a .npy/.npz tensor recording."
    )
    id: str | None = Field(None, description="Source id carried by every frame and result; defaults to the URI.")
    live: bool | None = Field(
        None,
        description="Live sources drop stale frames (latest frame wins); offline sources block and drop nothing. "
        "None decides from the URI: cameras and streams are live, files are offline.",
    )
    max_frame_age_ms: float = Field(
        500.0, gt=0, le=3_600_000,
        description="Live frames older than this when inference starts are dropped as too old (at most an hour)."
    )
    loop: bool = Field(False, description="Restart file sources from the beginning when they end.")
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig, description="Live-source recovery policy.")
    clips: ClipsConfig | None = Field(
        None, description="Clips around this stream's analytics events, with pre-roll (docs/clips.md); null: none.")


MAX_IMAGE_SIDE = 16384
"""Largest width or height of an image input, from a config or from model metadata."""

Side = Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)]
"""One side of an image input, in pixels."""


class PreprocessConfig(Strict):
    size: tuple[Side, Side] | None = Field(
        None,
        description="Model input [width, height], each 1..16384. Needed for models with dynamic spatial dims "
        "unless their metadata gives a size (Ultralytics `imgsz`, `lepton.preprocess`); a static model's "
        "input shape is the default and must match. A dynamic batch is always fed one frame.",
    )
    resize: Literal["letterbox", "stretch", "center-crop", "none"] = Field(
        "letterbox",
        description="Keep aspect ratio with padding (letterbox), stretch to fit, resize the short side to the "
        "input's and crop the centre (center-crop: Ultralytics' classification transform, resampled as Pillow's "
        "antialiased bilinear whatever `interpolation` says; the default for Ultralytics models whose metadata says "
        "`task: classify`), or no resize. Left unset, Ultralytics RT-DETR "
        "models (metadata `head: RTDETRDecoder`) are stretched, as Ultralytics feeds them.",
    )
    interpolation: Literal["auto", "linear", "area"] = Field(
        "auto",
        description="Resampling when resizing: auto (area when shrinking, bilinear when enlarging), linear "
        "(bilinear always, what Ultralytics' letterbox and RT-DETR stretch use), or area.",
    )
    pad_value: int = Field(114, ge=0, le=255, description="Grey level of letterbox padding.")
    color: Literal["rgb", "bgr", "gray"] = Field("rgb", description="Channel order the model expects.")
    scale: float = Field(1 / 255.0, gt=0, description="Multiplier applied to pixel values before mean/std.")
    mean: tuple[float, ...] = Field((0.0,), description="Subtracted per channel after scaling.")
    std: tuple[float, ...] = Field((1.0,), description="Divisor per channel after subtracting the mean.")
    layout: Literal["nchw", "nhwc"] | None = Field(None, description="Tensor layout; defaults from the model input.")
    dtype: Literal["float32", "float16", "uint8"] | None = Field(
        None, description="Tensor element type; defaults from the model input."
    )

    @field_validator("mean", "std")
    @classmethod
    def _per_channel(cls, values: tuple[float, ...], info: ValidationInfo) -> tuple[float, ...]:
        if len(values) not in (1, 3):
            raise ValueError(f"{info.field_name} must have 1 or 3 values, got {len(values)}")
        if info.field_name == "std" and any(v == 0 for v in values):
            raise ValueError("std must not contain 0")
        return values


class BoxDecodeConfig(Strict):
    """What every box decoder (detect, segment, pose, obb) shares: which boxes are kept."""

    conf_threshold: float = Field(0.25, ge=0, le=1, description="Minimum score to keep a detection.")
    iou_threshold: float = Field(0.45, ge=0, le=1, description="Overlap above which NMS suppresses a box.")
    max_detections: int = Field(100, ge=1, le=10000, description="Most detections kept per frame (1..10000).")
    class_agnostic: bool = Field(False, description="Suppress overlapping boxes across classes too.")


class TaskHeadConfig(BoxDecodeConfig):
    """Box decoding plus the layout of an Ultralytics task head (segment, pose, obb)."""

    layout: Literal["auto", "yolov8", "end2end"] = Field(
        "auto",
        description="Output layout: yolov8 (Ultralytics YOLOv8/11 one-to-many head `[1, 4+C+extra, A]`, NMS "
        "applied here) or end2end (YOLO26 end-to-end or an `nms=True` export, `[1, N, 6+extra]` rows: the box "
        "(x1, y1, x2, y2; obb: cx, cy, w, h), score, class, then the task's extra values). `auto` decides from the "
        "model's metadata (end2end, nms), else the output shapes.",
    )


class DetectConfig(BoxDecodeConfig):
    type: Literal["detect"] = Field(description="Decode object detections.")
    layout: Literal["auto", "yolov8", "yolov5", "nms", "rtdetr"] = Field(
        "auto",
        description="Output layout: yolov8/v11 `[1, 4+C, A]`, yolov5 `[1, A, 5+C]`, nms (boxes already "
        "selected in the graph, `[1, N, 6]` x1, y1, x2, y2, score, class, or four outputs), or rtdetr "
        "(Ultralytics RT-DETR: cx, cy, w, h normalised to 0..1, then score, class or C class scores). `auto` "
        "decides from the model's metadata (Ultralytics head, end2end, nms), else the output shapes.",
    )


class SegmentConfig(TaskHeadConfig):
    type: Literal["segment"] = Field(
        description="Decode instance segmentation (Ultralytics -seg: boxes plus prototype masks)."
    )
    mask_threshold: float = Field(
        0.5, gt=0, lt=1, description="Mask probability (after the sigmoid) above which a pixel belongs to the "
        "object, between 0 and 1 exclusive (Ultralytics: 0.5).",
    )
    mask_format: Literal["rle", "polygon"] = Field(
        "rle",
        description="How results write masks: rle (COCO run-length encoding of the mask in source pixels, "
        "pycocotools' compressed string) or polygon (outer contours, lists of x, y source pixels).",
    )


Skeleton = Annotated[list[tuple[Annotated[int, Field(ge=0, le=999)], Annotated[int, Field(ge=0, le=999)]]],
                     Field(max_length=1000)]
"""Keypoint index pairs joined by a line."""


class PoseConfig(TaskHeadConfig):
    type: Literal["pose"] = Field(description="Decode pose estimation (Ultralytics -pose: boxes plus keypoints).")
    keypoints: int | None = Field(
        None, ge=1, le=1000,
        description="Keypoints per object (1..1000); None reads Ultralytics `kpt_shape` from the model metadata.",
    )
    keypoint_dims: Literal[2, 3] | None = Field(
        None, description="Values per keypoint: 3 (x, y, visibility) or 2 (x, y); None reads `kpt_shape`, else 3.",
    )
    skeleton: Skeleton | None = Field(
        None, description="Keypoint index pairs the video sink joins with lines; None uses the COCO skeleton for "
        "17 keypoints and no lines otherwise.",
    )


class ObbConfig(TaskHeadConfig):
    type: Literal["obb"] = Field(
        description="Decode oriented boxes (Ultralytics -obb: cx, cy, w, h, angle in radians; rotated NMS)."
    )


class ClassifyConfig(Strict):
    type: Literal["classify"] = Field(description="Turn logits or probabilities into top-k classes.")
    top_k: int = Field(5, ge=1, le=10000, description="Number of classes reported (1..10000).")
    softmax: bool | None = Field(None, description="Apply softmax; None applies it unless outputs already sum to 1.")


MAX_RAW_VALUES = 1 << 20
"""Largest RawConfig.max_values: a result line stays well under a few megabytes."""


class RawConfig(Strict):
    type: Literal["raw"] = Field(description="Pass outputs through unchanged.")
    max_values: int = Field(
        4096, ge=0, le=MAX_RAW_VALUES,
        description="Outputs with at most this many values are written with their values; larger ones as a "
        "summary (shape, dtype, min, max, mean) saying the values were omitted. 0..1048576.",
    )
    outputs: list[TensorName] | None = Field(
        None, max_length=MAX_NAMED_INPUTS,
        description="Which outputs results report, by name (e.g. leave out a fed-back state); default all.",
    )


PostprocessConfig = Annotated[
    DetectConfig | SegmentConfig | PoseConfig | ObbConfig | ClassifyConfig | RawConfig, Field(discriminator="type")
]


MIN_SINK_MAX_BYTES = 64 << 10
MAX_SINK_MAX_BYTES = 1 << 40
DEFAULT_SINK_MAX_BYTES = 256 << 20


class JsonlSinkConfig(Strict):
    type: Literal["jsonl"] = Field(description="Append one JSON object per result to a file.")
    path: Path = Field(description="Output file; its folder is created.")
    queue_size: int = Field(
        1024, ge=1, le=100_000, description="Results buffered before the sink drops (and counts) them (1..100000)."
    )
    flush_every: int = Field(32, ge=1, le=100_000, description="Flush the file every N results (1..100000).")
    max_bytes: int = Field(
        DEFAULT_SINK_MAX_BYTES,
        ge=MIN_SINK_MAX_BYTES,
        le=MAX_SINK_MAX_BYTES,
        description="Size at which the file is rotated to `<stem>.1<suffix>` (replacing the previous one), so the sink "
        "never holds more than twice this on disk (64 KiB..1 TiB; default 256 MiB).",
    )


class VideoSinkConfig(Strict):
    type: Literal["video"] = Field(
        description="Write an annotated video (boxes or rotated boxes, masks, keypoints, labels, latency)."
    )
    path: Path = Field(description="Output video file (.mp4 or .avi).")
    fps: float = Field(30.0, gt=0, le=1000, description="Frame rate written into the file (at most 1000).")
    codec: str = Field("mp4v", min_length=4, max_length=4, description="FourCC of the video codec.")
    queue_size: int = Field(
        64, ge=1, le=1024, description="Frames buffered before the sink drops (and counts) them (1..1024)."
    )
    max_bytes: int = Field(
        DEFAULT_SINK_MAX_BYTES,
        ge=MIN_SINK_MAX_BYTES,
        le=MAX_SINK_MAX_BYTES,
        description="Size at which the video is closed and rotated to `<stem>.1<suffix>` (replacing the previous "
        "one), so the sink never holds much more than twice this on disk (64 KiB..1 TiB; default 256 MiB).",
    )


class ConsoleSinkConfig(Strict):
    type: Literal["console"] = Field(description="Print a live table of fps, per-stage latency and detections.")
    interval_s: float = Field(1.0, gt=0, le=3600, description="Seconds between table refreshes (at most an hour).")


SinkConfig = Annotated[JsonlSinkConfig | VideoSinkConfig | ConsoleSinkConfig, Field(discriminator="type")]


class PipelineConfig(Strict):
    latency_window: int = Field(
        4096,
        ge=16,
        le=1_000_000,
        description="Latency samples kept per stage for percentiles (a sliding window of 16..1000000).",
    )
    stats_interval_s: float = Field(
        5.0, gt=0, le=86400, description="Seconds between pipeline statistics log lines (at most a day)."
    )


MAX_ZONES = 32
"""Most zones (and, separately, lines and loitering rules) in one analytics section."""
MAX_POLYGON_POINTS = 64
"""Most vertices of one zone polygon."""
MAX_CLASS_FILTER = 256
"""Most class names in one class filter."""

Coordinate = Annotated[
    float, Field(ge=0, le=MAX_IMAGE_SIDE, allow_inf_nan=False,
                 description="x or y: source pixels (0..16384), or 0..1 of the width/height when normalised.")
]
Point = tuple[Coordinate, Coordinate]
AnalyticsName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
ClassFilter = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=128)]],
    Field(max_length=MAX_CLASS_FILTER, description="Class labels this applies to (empty: every class)."),
]


class TrackingConfig(Strict):
    """ByteTrack-style multi-object tracking in capture-time seconds (docs/tracking.md)."""

    high_threshold: float = Field(
        0.5, ge=0, le=1, description="Detections scoring at least this are matched first and may start tracks.")
    low_threshold: float = Field(
        0.1, ge=0, le=1, description="Detections between this and high_threshold only extend existing tracks "
        "(ByteTrack's second stage); lower ones are ignored.")
    new_track_threshold: float = Field(
        0.6, ge=0, le=1, description="Unmatched detections scoring at least this start a new (tentative) track.")
    match_iou: float = Field(
        0.2, ge=0.01, le=1, description="Least IoU between a track's predicted box and a detection to match them.")
    recover_gate: float = Field(
        2.0, ge=0, le=10, description="Lost tracks left unmatched by IoU may take a detection whose centre is "
        "within this many standard deviations of the predicted centre (0: IoU only).")
    max_lost_s: float = Field(
        1.5, gt=0, le=600, description="Seconds of capture time a track is kept without a detection before it "
        "ends (at most 10 minutes).")
    confirm_hits: int = Field(
        2, ge=1, le=100, description="Detections a new track needs before it gets an id in results (1..100).")
    class_agnostic: bool = Field(
        False, description="Match detections to tracks of any class (the track takes the detection's class); "
        "false keeps one class per track.")
    motion_noise: float = Field(
        0.3, gt=0, le=100, description="Process noise of the constant-velocity motion model: acceleration "
        "spread in box heights per second squared.")
    measurement_noise: float = Field(
        0.05, gt=0, le=1, description="Spread of detected box edges, as a fraction of the box height.")
    max_tracks: int = Field(
        1000, ge=1, le=100_000, description="Most live tracks per stream; the oldest lost ones end first.")

    @model_validator(mode="after")
    def _ordered_thresholds(self) -> TrackingConfig:
        if self.low_threshold > self.high_threshold:
            raise ValueError(f"tracking.low_threshold ({self.low_threshold}) is above tracking.high_threshold "
                             f"({self.high_threshold})")
        return self


class ZoneConfig(Strict):
    name: AnalyticsName = Field(description="Zone name in events and counts (letters, digits, _ . -).")
    polygon: list[Point] = Field(
        min_length=3, max_length=MAX_POLYGON_POINTS, description="Vertices [x, y] in order (3..64).")
    classes: ClassFilter = Field(default_factory=list)
    loiter_s: float | None = Field(
        None, gt=0, le=86400, description="A track staying in the zone this many seconds raises one loitering "
        "event per visit (at most a day); null: no loitering events.")


class LineConfig(Strict):
    name: AnalyticsName = Field(description="Line name in events and counts (letters, digits, _ . -).")
    start: Point = Field(description="One end [x, y].")
    end: Point = Field(description="The other end [x, y]. Walking from start to end, `in` is a crossing to the "
                       "right-hand side on the image (y down: a line drawn left to right counts downward as in).")
    classes: ClassFilter = Field(default_factory=list)

    @model_validator(mode="after")
    def _has_length(self) -> LineConfig:
        if self.start == self.end:
            raise ValueError(f"line {self.name!r}: start and end are the same point")
        return self


class AnalyticsConfig(Strict):
    """Zones, lines and loitering on tracks (needs the tracking section)."""

    coordinates: Literal["pixels", "normalized"] = Field(
        "pixels", description="Units of every point: source pixels, or 0..1 of the frame width and height.")
    anchor: Literal["bottom_center", "center"] = Field(
        "bottom_center", description="The point of a box that enters zones and crosses lines.")
    hysteresis_px: float = Field(
        4.0, ge=0, le=1000, description="A track must be this far (source pixels) past a line or a zone's edge "
        "before its side changes, so jitter on the boundary does not count twice.")
    zones: list[ZoneConfig] = Field(default_factory=list, max_length=MAX_ZONES, description="Polygon zones (<= 32).")
    lines: list[LineConfig] = Field(default_factory=list, max_length=MAX_ZONES, description="Counting lines (<= 32).")
    counts_interval_s: float = Field(
        60.0, ge=0.5, le=86400, description="Seconds of capture time between periodic count snapshots (0.5..86400: "
        "each one is a durable event, so at most two a second per stream).")
    appeared: bool = Field(
        False, description="Raise an `appeared` event (class and confidence) when a track is confirmed.")

    @model_validator(mode="after")
    def _valid_geometry(self) -> AnalyticsConfig:
        names = [z.name for z in self.zones] + [line.name for line in self.lines]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"analytics names must be unique; given twice: {', '.join(twice)}")
        if self.coordinates == "normalized":
            for where, points in [(f"zone {z.name!r}", z.polygon) for z in self.zones] + \
                    [(f"line {line.name!r}", [line.start, line.end]) for line in self.lines]:
                if any(v > 1 for p in points for v in p):
                    raise ValueError(f"{where}: normalized coordinates must be within 0..1")
        return self

"""Writes models/shapes_detector_batched.onnx: shapes_detector.onnx with a dynamic batch axis, for the demo's
cross-stream batching (two streams, one inference per batch).

The exported detector hard-codes batch 1 in the shape constants of its six head Reshapes ([1, 4, -1] and
[1, 3, -1]). ``set_batch`` (``lepton_edge.engines.batching``, the same step as ``lepton-edge build --batch
dynamic``) gives each of them a 0 on axis 0 (ONNX Reshape: copy the input's batch) and proves the result with
onnxruntime on random frames: at batch 1 the outputs are the original's, at batch 3 each frame's outputs are those
of a batch-1 call. Nothing else changes (weights, metadata). No torch, no download; a rerun writes the same bytes.

    .venv/bin/python models/make_shapes_detector_batched.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from lepton_edge.engines.batching import set_batch

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "shapes_detector.onnx"
OUT = HERE / "shapes_detector_batched.onnx"


def main() -> int:
    capability = set_batch(SOURCE, OUT, "dynamic")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {capability.summary()}; {capability.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

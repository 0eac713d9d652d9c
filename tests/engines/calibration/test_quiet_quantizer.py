"""A build quantizes a model dozens of times: onnxruntime's quantizer must not print or log per call."""

import functools
import logging

import numpy as np
import onnxruntime.quantization as ortq

from lepton_edge.engines.calibration import calibrate
from lepton_edge.engines.calibration.qdq import QdqQuantizer, _QuietQuantizer
from tests.engines.calibration.test_sensitivity import WIDTH, planted_model


def test_the_quantizers_records_and_prints_are_dropped(tmp_path, monkeypatch, capsys, caplog):
    model = planted_model(tmp_path / "p.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((8, 1, WIDTH)).astype(np.float32))
    table = calibrate(model, tmp_path / "x.npy", method="minmax", samples=8, progress=False)
    real = ortq.quantize_static

    @functools.wraps(real)
    def chatty(*args, **kwargs):
        print("Quantizing node planted")
        return real(*args, **kwargs)

    monkeypatch.setattr(ortq, "quantize_static", chatty)
    with caplog.at_level(logging.DEBUG):
        QdqQuantizer(model, table).write(tmp_path / "q.onnx", ["planted"])
    assert "Quantizing node" not in capsys.readouterr().out
    record = logging.LogRecord("root", logging.INFO, "/x/site-packages/onnxruntime/quantization/qdq_quantizer.py",
                               1, "Quantization parameters for tensor:%s not specified", ("t",), None)
    assert not _QuietQuantizer().filter(record)
    ours = logging.LogRecord("lepton", logging.INFO, "/x/lepton_edge/engines/builder.py", 1, "fine", (), None)
    assert _QuietQuantizer().filter(ours)

"""Fetch Silero VAD (MIT) from its PyPI wheel and write the recorded audio the tests run it on.

Run by hand only (the runtime and the tests never download anything):

    .venv/bin/python models/fetch_silero_vad.py            # downloads the wheel, writes the files below
    .venv/bin/python models/fetch_silero_vad.py --audio-only   # only (re)writes the recording

Writes, next to this script:

- ``silero_vad.onnx``: ``silero_vad/data/silero_vad_16k_op15.onnx`` from the ``silero-vad`` wheel (16 kHz only,
  opset 15), checked against the sha256 below;
- ``silero_vad.LICENSE``: the wheel's MIT license text;
- ``silero_vad_audio.npz``: ``input`` float32 ``[T, 576]``, one 32 ms window of 16 kHz audio per frame (512 new
  samples after the previous window's last 64, the context Silero's own wrapper prepends), from a seeded synthetic
  signal: 1 s near-silence, 1 s white noise, 1.5 s of a synthetic vowel (glottal pulses through formant
  resonators, pitch gliding, syllable-rate envelope), 0.5 s near-silence.

Needs pip (the wheel is fetched with ``pip download silero-vad==VERSION --no-deps``) and numpy only.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

VERSION = "6.2.3"
MEMBER = "silero_vad/data/silero_vad_16k_op15.onnx"
SHA256 = "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49"
LICENSE_MEMBER = f"silero_vad-{VERSION}.dist-info/licenses/LICENSE"
HERE = Path(__file__).resolve().parent

RATE = 16000
WINDOW = 512
CONTEXT = 64


def fetch(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", f"silero-vad=={VERSION}", "--no-deps",
                        "--only-binary", ":all:", "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("silero_vad-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            model = archive.read(MEMBER)
            license_text = archive.read(LICENSE_MEMBER)
    digest = hashlib.sha256(model).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{MEMBER} from silero-vad {VERSION} has sha256 {digest}, expected {SHA256}")
    (out / "silero_vad.onnx").write_bytes(model)
    (out / "silero_vad.LICENSE").write_bytes(license_text)
    print(f"wrote {out / 'silero_vad.onnx'} ({len(model)} bytes, sha256 {digest})")


def _resonator(signal: np.ndarray, freq: float, bandwidth: float) -> np.ndarray:
    """A two-pole resonator (one formant) at ``freq`` Hz."""
    r = np.exp(-np.pi * bandwidth / RATE)
    a1, a2 = -2 * r * np.cos(2 * np.pi * freq / RATE), r * r
    out = np.zeros_like(signal)
    y1 = y2 = 0.0
    for i, x in enumerate(signal):
        y = x - a1 * y1 - a2 * y2
        out[i] = y
        y1, y2 = y, y1
    return out


def synthetic_audio(seed: int = 0) -> np.ndarray:
    """Near-silence, white noise, a synthetic vowel, near-silence: float32 in [-1, 1] at 16 kHz."""
    rng = np.random.default_rng(seed)
    silence = 0.001 * rng.standard_normal(RATE)
    noise = 0.3 * rng.standard_normal(RATE)
    n = int(1.5 * RATE)
    t = np.arange(n) / RATE
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)  # a gliding pitch, as in speech
    phase = np.cumsum(pitch / RATE)
    pulses = (np.diff(np.floor(phase), prepend=0.0) > 0).astype(np.float64)
    formants = ((700, 110), (1220, 120), (2600, 160))  # the vowel /a/
    voiced = sum(_resonator(pulses, freq, bandwidth) for freq, bandwidth in formants)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t - np.pi / 2)  # about four syllables a second
    voiced = voiced * envelope
    voiced = 0.5 * voiced / np.max(np.abs(voiced)) + 0.002 * rng.standard_normal(n)
    tail = 0.001 * rng.standard_normal(RATE // 2)
    return np.concatenate([silence, noise, voiced, tail]).astype(np.float32)


def windows(audio: np.ndarray) -> np.ndarray:
    """``[T, 576]``: each 512-sample window after the previous window's last 64 samples (zeros before the first)."""
    count = len(audio) // WINDOW
    padded = np.concatenate([np.zeros(CONTEXT, np.float32), audio[: count * WINDOW]])
    return np.stack([padded[i * WINDOW: i * WINDOW + CONTEXT + WINDOW] for i in range(count)]).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--audio-only", action="store_true", help="only write silero_vad_audio.npz")
    args = parser.parse_args()
    if not args.audio_only:
        fetch(HERE)
    frames = windows(synthetic_audio())
    np.savez_compressed(HERE / "silero_vad_audio.npz", input=frames)
    print(f"wrote {HERE / 'silero_vad_audio.npz'}: input {list(frames.shape)} float32")


if __name__ == "__main__":
    main()

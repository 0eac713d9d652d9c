import time

import numpy as np
import pytest

from lepton_edge.config.pipeline import SourceConfig
from lepton_edge.core.errors import SourceError
from lepton_edge.runtime.sources import SourceState, create_source
from tests.runtime.sources.media import read_all


def test_npy_replays_the_first_axis_unchanged(tmp_path):
    data = np.random.default_rng(0).normal(size=(5, 4, 3)).astype(np.float16)
    np.save(tmp_path / "radar.npy", data)
    config = SourceConfig(uri=str(tmp_path / "radar.npy"))
    source = create_source(config)
    assert source.kind == "tensor" and source.live is False
    frames, reader = read_all(config)
    assert len(frames) == 5 and reader.state is SourceState.ENDED
    for i, frame in enumerate(frames):
        assert frame.data.dtype == np.float16 and frame.data.shape == (4, 3)
        assert np.array_equal(frame.data, data[i])
        assert type(frame.data) is np.ndarray and frame.data.flags.writeable  # a copy, not a file mapping
    assert reader.stats()["source"]["frame_shape"] == [4, 3]


def test_npz_uses_the_array_named_frames(tmp_path):
    frames_array = np.arange(12, dtype=np.int32).reshape(3, 4)
    np.savez(tmp_path / "rec.npz", timestamps=np.arange(3.0), frames=frames_array)
    frames, _ = read_all(SourceConfig(uri=str(tmp_path / "rec.npz")))
    assert [f.data.tolist() for f in frames] == frames_array.tolist()


def test_npz_with_a_single_array_uses_it(tmp_path):
    np.savez_compressed(tmp_path / "one.npz", lidar=np.ones((2, 8), np.uint16))
    frames, _ = read_all(SourceConfig(uri=str(tmp_path / "one.npz")))
    assert len(frames) == 2 and frames[0].data.dtype == np.uint16


def test_npz_with_several_arrays_gives_one_array_per_input_each_frame(tmp_path):
    audio = np.arange(3 * 4, dtype=np.float32).reshape(3, 4)
    meta = np.array([[1], [2], [3]], np.int64)
    np.savez(tmp_path / "two.npz", audio=audio, meta=meta)
    frames, reader = read_all(SourceConfig(uri=str(tmp_path / "two.npz")))
    assert len(frames) == 3 and reader.state is SourceState.ENDED
    for i, frame in enumerate(frames):
        assert sorted(frame.data) == ["audio", "meta"]
        assert np.array_equal(frame.data["audio"], audio[i]) and frame.data["meta"].tolist() == [i + 1]
    assert reader.stats()["source"]["arrays"] == {"audio": {"shape": [4], "dtype": "float32"},
                                                  "meta": {"shape": [1], "dtype": "int64"}}


def test_npz_arrays_of_different_lengths_are_refused_naming_each(tmp_path):
    np.savez(tmp_path / "two.npz", left=np.zeros((2, 2)), right=np.zeros((3, 2)))
    source = create_source(SourceConfig(uri=str(tmp_path / "two.npz")))
    with pytest.raises(SourceError, match=r"different numbers of frames \(left \[2, 2\], right \[3, 2\]\)"):
        source.open()


def test_npz_array_without_a_frame_axis_is_refused(tmp_path):
    np.savez(tmp_path / "two.npz", input=np.zeros((2, 4), np.float32), sr=np.array(16000))
    source = create_source(SourceConfig(uri=str(tmp_path / "two.npz")))
    with pytest.raises(SourceError, match=r"\['sr'\] hold a single value.*model.inputs.constants"):
        source.open()


def test_npy_uri_with_fps_is_paced_and_live(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
    config = SourceConfig(uri=f"npy://{tmp_path / 'x.npy'}?fps=20")
    assert create_source(config).live is True
    started = time.monotonic()
    frames, reader = read_all(config)
    assert len(frames) == 4 and reader.state is SourceState.ENDED
    assert time.monotonic() - started >= 3 / 20 * 0.9


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("npy://{d}/x.npy?rate=3", "unknown parameter 'rate'"),
        ("npy://{d}/x.npy?fps=-3", "parameter 'fps'"),
        ("npy://{d}/missing.npy", "source not found"),
        ("npy://{d}/x.txt", "needs a .npy or .npz file"),
        ("{d}/missing.npz", "source not found"),
    ],
)
def test_bad_tensor_uris_are_rejected(tmp_path, uri, message):
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
    (tmp_path / "x.txt").write_text("not a tensor")
    with pytest.raises(SourceError, match=message):
        create_source(SourceConfig(uri=uri.format(d=tmp_path)))


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.float32(3.0), "single value"),
        (np.zeros((0, 3)), "holds no frames"),
        (np.array([{"a": 1}], dtype=object), "cannot load it as a NumPy .npy file"),
    ],
)
def test_unusable_arrays_are_rejected_at_open(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array, allow_pickle=True)
    source = create_source(SourceConfig(uri=str(tmp_path / "bad.npy")))
    with pytest.raises(SourceError, match=message):
        source.open()


def test_corrupt_npy_is_rejected_at_open(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    source = create_source(SourceConfig(uri=str(tmp_path / "bad.npy")))
    with pytest.raises(SourceError, match=r"bad\.npy: cannot load it"):
        source.open()

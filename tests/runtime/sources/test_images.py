import logging

import numpy as np
import pytest

from lepton_edge.config.pipeline import SourceConfig
from lepton_edge.core.errors import SourceError
from lepton_edge.runtime.sources import SourceState, create_source
from tests.runtime.sources.media import read_all, write_image


def test_folder_is_read_in_name_order_skipping_corrupt_images_and_other_files(tmp_path, caplog):
    write_image(tmp_path / "b.png", 100)
    write_image(tmp_path / "a.jpg", 50)
    write_image(tmp_path / "d.BMP", 200)
    (tmp_path / "c.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    config = SourceConfig(uri=str(tmp_path))
    source = create_source(config)
    assert source.live is False and source.kind == "image"

    with caplog.at_level(logging.WARNING):
        frames, reader = read_all(config)

    assert [round(float(f.data.mean())) for f in frames] == [50, 100, 200]
    assert all(f.data.ndim == 3 and f.data.shape[2] == 3 and f.data.dtype == np.uint8 for f in frames)
    assert reader.state is SourceState.ENDED
    assert reader.stats()["source"]["skipped"] == 1
    assert reader.stats()["source"]["images"] == 4
    assert any("c.jpeg" in r.getMessage() and "skipping" in r.getMessage() for r in caplog.records)


def test_single_image_gives_one_frame(tmp_path):
    path = write_image(tmp_path / "one.png", 77, size=(40, 30))
    frames, reader = read_all(SourceConfig(uri=str(path)))
    assert len(frames) == 1 and frames[0].data.shape == (30, 40, 3)
    assert reader.state is SourceState.ENDED


def test_grayscale_and_16_bit_images_become_bgr_uint8(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "gray.png"), np.full((10, 12), 9, np.uint8))
    cv2.imwrite(str(tmp_path / "deep.tif"), np.full((10, 12, 3), 60000, np.uint16))
    frames, _ = read_all(SourceConfig(uri=str(tmp_path)))
    assert [f.data.shape for f in frames] == [(10, 12, 3), (10, 12, 3)]
    assert all(f.data.dtype == np.uint8 for f in frames)


def test_folder_loops_when_asked(tmp_path):
    write_image(tmp_path / "a.png", 10)
    write_image(tmp_path / "b.png", 20)
    frames, reader = read_all(SourceConfig(uri=str(tmp_path), loop=True), limit=5)
    assert [round(float(f.data.mean())) for f in frames] == [10, 20, 10, 20, 10]
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4]
    assert reader.state is SourceState.STOPPED


def test_corrupt_single_image_is_an_error(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(SourceError, match=r"broken\.png: cannot decode this image"):
        read_all(SourceConfig(uri=str(tmp_path / "broken.png")))


def test_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(SourceError, match="the folder has no images"):
        read_all(SourceConfig(uri=str(tmp_path)))


def test_folder_of_only_corrupt_images_is_an_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"junk")
    (tmp_path / "b.png").write_bytes(b"")
    frames = []
    with pytest.raises(SourceError, match=r"none of the 2 image\(s\) in the folder could be decoded"):
        for frame in read_all(SourceConfig(uri=str(tmp_path)))[0]:
            frames.append(frame)
    assert frames == []

import numpy as np
import pytest

from lepton_edge.config.pipeline import PreprocessConfig
from lepton_edge.core.errors import ConfigError, ModelError
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime.preprocess import Preprocessor, Transform


def spec(shape, dtype="float32"):
    return TensorSpec("images", tuple(shape), np.dtype(dtype))


def reference(image, size, color="rgb", scale=1 / 255, mean=(0, 0, 0), std=(1, 1, 1), pad=114):
    """A slow, obvious letterbox + normalise, for comparison."""
    import cv2

    h, w = image.shape[:2]
    W, H = size
    r = min(W / w, H / h)
    nw, nh = round(w * r), round(h * r)
    interp = cv2.INTER_AREA if nw < w else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    canvas = np.full((H, W, 3), pad, np.uint8)
    top, left = (H - nh) // 2, (W - nw) // 2
    canvas[top : top + nh, left : left + nw] = resized
    if color == "rgb":
        canvas = canvas[:, :, ::-1]
    x = canvas.astype(np.float64) * scale
    x = (x - np.array(mean)) / np.array(std)
    return x.transpose(2, 0, 1)[None].astype(np.float32), (left, top, nw / w, nh / h)


def test_letterbox_matches_reference_and_reuses_the_buffer():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    cfg = PreprocessConfig(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    pre = Preprocessor(spec([1, 3, 320, 320]), cfg)
    buf = pre.new_buffer()
    transform = pre(image, buf)
    want, (left, top, sx, sy) = reference(image, (320, 320), mean=cfg.mean, std=cfg.std)
    np.testing.assert_allclose(buf, want, atol=1e-4)
    assert (transform.pad_x, transform.pad_y) == (left, top) == (0, 40)
    assert transform.scale_x == pytest.approx(sx) and transform.scale_y == pytest.approx(sy)
    again = pre(image[::-1].copy(), buf)  # same buffer object is filled in place
    assert again == transform
    np.testing.assert_allclose(buf, reference(image[::-1].copy(), (320, 320), mean=cfg.mean, std=cfg.std)[0],
                               atol=1e-4)


def test_transform_maps_boxes_back_to_source_pixels():
    pre = Preprocessor(spec([1, 3, 320, 320]))
    t = pre(np.zeros((480, 640, 3), np.uint8), pre.new_buffer())
    # the source box (100, 50)-(300, 250) is at (50, 65)-(150, 165) in the letterboxed 320x320 input
    model_box = np.array([[100 * 0.5, 50 * 0.5 + 40, 300 * 0.5, 250 * 0.5 + 40]], np.float32)
    np.testing.assert_allclose(t.to_source(model_box), [[100, 50, 300, 250]], atol=1e-4)
    # boxes reaching into the padding are clipped to the source image
    np.testing.assert_allclose(t.to_source(np.array([[-10, 0, 330, 320]], np.float32)), [[0, 0, 640, 480]])


def test_stretch_and_bgr_and_nhwc_uint8():
    image = np.zeros((100, 200, 3), np.uint8)
    image[..., 0] = 10  # B
    image[..., 2] = 200  # R
    pre = Preprocessor(spec([1, 50, 50, 3], "uint8"), PreprocessConfig(resize="stretch", color="bgr"))
    buf = pre.new_buffer()
    t = pre(image, buf)
    assert buf.shape == (1, 50, 50, 3) and buf.dtype == np.uint8
    assert (buf[0, :, :, 0] == 10).all() and (buf[0, :, :, 2] == 200).all()
    assert t == Transform(0.25, 0.5, 0.0, 0.0, 200, 100)
    rgb = Preprocessor(spec([1, 50, 50, 3]), PreprocessConfig(resize="stretch", scale=1.0))
    b2 = rgb.new_buffer()
    rgb(image, b2)
    assert (b2[0, :, :, 0] == 200).all() and (b2[0, :, :, 2] == 10).all()


def test_gray_and_float16():
    image = np.full((8, 8, 3), 255, np.uint8)
    pre = Preprocessor(spec([1, 1, 8, 8], "float16"), PreprocessConfig(color="gray", resize="none"))
    buf = pre.new_buffer()
    pre(image, buf)
    assert buf.dtype == np.float16 and np.allclose(buf, 1.0)


def test_dynamic_size_needs_config_and_mismatches_are_clear():
    with pytest.raises(ConfigError, match="dynamic spatial size"):
        Preprocessor(spec([1, 3, "h", "w"]))
    pre = Preprocessor(spec([1, 3, "h", "w"]), PreprocessConfig(size=(64, 32)))
    assert pre.shape == (1, 3, 32, 64)
    with pytest.raises(ModelError, match="does not match input"):
        Preprocessor(spec([1, 3, 320, 320]), PreprocessConfig(size=(640, 640)))
    with pytest.raises(ModelError, match="channel"):
        Preprocessor(spec([1, 1, 32, 32]))
    with pytest.raises(ModelError, match="resize is 'none'"):
        Preprocessor(spec([1, 3, 32, 32]), PreprocessConfig(resize="none"))(np.zeros((10, 10, 3), np.uint8),
                                                                          np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ModelError, match="4-D"):
        Preprocessor(spec([1, 3072]))


ULTRALYTICS_DETECTOR = {"author": "Ultralytics", "task": "detect", "imgsz": "[160, 160]", "names": "{0: 'a'}"}


@pytest.mark.parametrize(
    ("metadata", "explicit", "interpolation", "resize"),
    [
        (ULTRALYTICS_DETECTOR, {}, "linear", "letterbox"),
        ({**ULTRALYTICS_DETECTOR, "head": "RTDETRDecoder"}, {}, "linear", "stretch"),
        ({**ULTRALYTICS_DETECTOR, "task": "classify"}, {}, "linear", "center-crop"),
        (ULTRALYTICS_DETECTOR, {"interpolation": "area", "resize": "stretch"}, "area", "stretch"),
        ({"lepton.task": "detect"}, {}, "auto", "letterbox"),
    ],
)
def test_unset_settings_follow_the_exporter_and_explicit_ones_win(metadata, explicit, interpolation, resize):
    spec = TensorSpec("images", (1, 3, 160, 160), np.float32)
    pre = Preprocessor(spec, PreprocessConfig(**explicit), metadata=metadata)
    assert (pre.config.interpolation, pre.config.resize) == (interpolation, resize)

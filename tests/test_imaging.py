import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core.imaging import (
    ImageError,
    load_rgb,
    resize_pad_256,
    to_tensor,
    to_uint8,
    unpad_256,
)


@pytest.mark.parametrize("name", ["condition", "wide_input"])
def test_resize_pad_matches_published_oracle(reference, name):
    src = next((reference / "api-test").glob(f"{name}.*"))
    ours, _ = resize_pad_256(load_rgb(src))
    expected = np.asarray(
        Image.open(reference / "api-test" / f"{name}_padded256.png").convert("RGB")
    )
    assert ours.size == (256, 256)
    assert np.abs(np.asarray(ours).astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("size", [(300, 500), (500, 300), (176, 256), (90, 400)])
def test_unpad_returns_original_size(size):
    im = Image.new("RGB", size, (10, 120, 200))
    canvas, box = resize_pad_256(im)
    back = unpad_256(canvas, box)
    assert back.size == size
    centre = np.asarray(back)[size[1] // 2, size[0] // 2]
    assert np.abs(centre.astype(int) - [10, 120, 200]).max() <= 2


def test_load_rgb_converts_modes_and_reports_bad_files(tmp_path):
    Image.new("L", (8, 8), 100).save(tmp_path / "grey.png")
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "alpha.png")
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    for name in ("grey.png", "alpha.png", "cmyk.jpg"):
        assert load_rgb(tmp_path / name).mode == "RGB"
    assert np.asarray(load_rgb(tmp_path / "alpha.png")).min() == 255  # transparent -> white
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    Image.new("RGB", (64, 64), 7).save(tmp_path / "full.jpg")
    (tmp_path / "trunc.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:200])
    with pytest.raises(ImageError, match="empty"):
        load_rgb(tmp_path / "empty.jpg")
    for name in ("text.jpg", "trunc.jpg"):
        with pytest.raises(ImageError, match="not a readable image"):
            load_rgb(tmp_path / name)
    with pytest.raises(ImageError, match="cannot read"):
        load_rgb(tmp_path / "missing.jpg")


def test_tensor_mappings():
    arr = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    t = to_tensor(arr)
    assert t.min() == -1 and t.max() == 1
    np.testing.assert_array_equal(to_uint8(t), arr)
    x = torch.tensor([[[[-0.5, 0.5]]]]).repeat(1, 3, 1, 1)
    assert to_uint8(x, minmax=True)[0, 0].tolist() == [[0, 0, 0], [255, 255, 255]]
    assert to_uint8(x)[0, 0, 0].tolist() == [64, 64, 64]


def test_sixteen_bit_grey_png_is_scaled_to_eight_bits(tmp_path):
    levels = np.array([0, 257, 0x7F7F, 0x8080, 0xC0C0, 0xFFFF], np.uint16)
    wide = np.tile(levels, (4, 1))
    Image.fromarray(wide).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as im:
        assert im.mode.startswith("I;16")  # really 16 bits on disk
    rgb = np.asarray(load_rgb(tmp_path / "grey16.png"))
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
    assert rgb[0, :, 0].tolist() == [0, 1, 127, 128, 192, 255]
    assert (rgb == rgb[..., :1]).all()


def test_thirty_two_bit_pixels_are_refused_with_the_reason(tmp_path):
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ImageError, match="32-bit float pixels"):
        load_rgb(tmp_path / "float.tif")


def test_fit_frame_scales_to_the_height_then_crops_or_pads_the_width():
    from pipeline.core.imaging import fit_frame

    wide = Image.new("RGB", (600, 300), (10, 20, 30))
    fitted = np.asarray(fit_frame(wide, (256, 176)))
    assert fitted.shape == (256, 176, 3) and (fitted == [10, 20, 30]).all()  # cropped
    narrow = np.asarray(fit_frame(Image.new("RGB", (50, 512), (10, 20, 30)), (256, 176)))
    assert narrow.shape == (256, 176, 3)
    assert (narrow[:, :70] == 255).all() and (narrow[:, 106:] == 255).all()  # padded white
    assert (narrow[:, 76:100] == [10, 20, 30]).all()

"""The `full` view: DINO's retrieval pixels (decode, RGB, `thumbnail` LANCZOS), regions, EXIF, draft."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import skimage.data as data
import torch  # the paper's F.interpolate sizes the rescaled view (imported here: it runs ldconfig)
from PIL import Image, ImageOps

from simpool_serve.service.engine.boxes import image_box
from simpool_serve.service.engine.errors import Kind
from simpool_serve.service.engine.preprocess import ImageTooLarge, load
from simpool_serve.service.engine.views import (
    DRAFT_MARGIN,
    MIN_SIDE_CNN,
    MIN_SIDE_VIT,
    RegionError,
    ViewTooSmall,
    check_scales,
    covered_geometry,
    crop_box,
    exact_scale,
    full_view,
    graph_scale,
    graph_side,
    min_side,
    render,
    scaled_side,
    thumbnail_size,
)
from simpool_serve.service.http_status import status_of

MAX_PIXELS = 10**9
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def reference(payload: bytes, size: int, box: tuple[float, ...] | None = None) -> np.ndarray:
    """DINO's retrieval loader (EXIF applied, as the service does), then revisitop's query crop."""
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(payload))).convert("RGB")
    if box is not None:
        img = img.crop(box)
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img)


def pixel_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the two views as the graph sees them (normalised with ImageNet's mean and std)."""
    x = ((a / 255.0 - MEAN) / STD).ravel()
    y = ((b / 255.0 - MEAN) / STD).ravel()
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(data, name)()).convert("RGB")


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    """A 3000×2000 JPEG: a photograph upscaled, with a second one pasted in at full sharpness."""
    img = photo("coffee").resize((3000, 2000), Image.Resampling.BICUBIC)
    img.paste(photo("astronaut"), (2300, 1300))
    return encode(img, quality=90)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket", "camera", "logo"])
@pytest.mark.parametrize("size", [224, 512])
def test_full_view_is_dino_thumbnail(name: str, size: int) -> None:
    img = Image.fromarray(getattr(data, name)())
    payload = encode(img, "PNG")
    view = full_view(payload, size, MAX_PIXELS)
    expected = reference(payload, size)
    assert view.pixels.dtype == np.uint8 and view.pixels.shape == (*expected.shape[:2], 3)
    np.testing.assert_array_equal(view.pixels, expected)
    assert max(view.pixels.shape[:2]) == min(size, max(img.size))
    assert view.geometry.crop == (0.0, 0.0, float(img.width), float(img.height))
    assert not view.drafted


def test_never_enlarged() -> None:
    img = photo("coffee")  # 600×400
    view = full_view(encode(img, "PNG"), 1024, MAX_PIXELS)
    np.testing.assert_array_equal(view.pixels, np.asarray(img))


def test_thumbnail_size_is_pillows() -> None:
    rng = random.Random(0)
    cases = [
        (rng.randint(1, 1600), rng.randint(1, 1600), rng.choice([32, 100, 224, 225, 333, 512]))
        for _ in range(300)
    ]
    cases += [
        (600, 400, 224),
        (400, 600, 224),
        (1, 5000, 224),
        (5000, 1, 224),
        (224, 224, 224),
        (225, 224, 224),
    ]
    for w, h, size in cases:
        img = Image.new("L", (w, h))
        img.thumbnail((size, size), Image.Resampling.LANCZOS)
        assert thumbnail_size(w, h, size) == img.size, (w, h, size)


def test_region_is_image_crop_then_thumbnail() -> None:
    payload = encode(photo("chelsea"), "PNG")  # 451×300
    box = (30.4, 20.6, 400.5, 251.5)  # Image.crop rounds: (30, 21, 400, 252)
    view = full_view(payload, 224, MAX_PIXELS, region=box)
    np.testing.assert_array_equal(view.pixels, reference(payload, 224, box))
    assert view.geometry.crop == (30.0, 21.0, 400.0, 252.0)
    assert (view.geometry.width, view.geometry.height) == (451, 300)
    small = full_view(payload, 512, MAX_PIXELS, region=[10, 10, 60, 40])  # never enlarged
    np.testing.assert_array_equal(small.pixels, np.asarray(photo("chelsea"))[10:40, 10:60])


@pytest.mark.parametrize(
    "box",
    [
        (-5, 0, 100, 100),  # outside, left
        (0, 0, 452, 100),  # outside, right
        (0, 0, 100, 301),  # outside, bottom
        (600, 400, 700, 500),  # wholly outside
        (100, 100, 100, 200),  # x1 == x0
        (100, 200, 150, 100),  # y1 < y0
        (10.6, 10, 11.4, 50),  # empty once rounded (11, 11)
        (0, 0, float("nan"), 10),
        (0, 0, 10),
        ("a", 0, 10, 10),
    ],
)
def test_bad_region_is_invalid(box: tuple) -> None:
    payload = encode(photo("chelsea"), "PNG")
    with pytest.raises(RegionError) as info:
        full_view(payload, 224, MAX_PIXELS, region=box)
    assert info.value.kind is Kind.INVALID and status_of(info.value) == 422


def test_crop_box_rounds_as_pillow() -> None:
    assert crop_box((0.5, 1.5, 2.5, 3.49), 10, 10) == (0, 2, 2, 3)  # Python rounds halves to even
    assert crop_box((-0.4, 0, 10.4, 10), 10, 10) == (0, 0, 10, 10)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_and_region_are_upright(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = encode(photo("coffee"), quality=92, exif=exif.tobytes())  # stored 600×400
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(payload)))
    box = (20, 30, upright.width - 10, upright.height - 50)
    view = full_view(payload, 224, MAX_PIXELS, region=box, draft=False)
    np.testing.assert_array_equal(view.pixels, reference(payload, 224, box))
    assert (view.geometry.width, view.geometry.height) == upright.size


def test_pixel_limit_applies() -> None:
    payload = encode(photo("coffee"), "PNG")
    with pytest.raises(ImageTooLarge) as info:
        full_view(payload, 224, 600 * 400 - 1)
    assert status_of(info.value) == 413


def test_undecodable_is_bad_image() -> None:
    with pytest.raises(Exception) as info:
        full_view(b"not an image", 224, MAX_PIXELS)
    assert status_of(info.value) == 400


@pytest.mark.parametrize("size", [224, 288])
@pytest.mark.parametrize("region", [None, (200.2, 100.0, 2900.0, 1900.7)])
def test_draft_stays_within_cosine_of_full_decode(big_jpeg: bytes, size: int, region: tuple | None) -> None:
    drafted = full_view(big_jpeg, size, MAX_PIXELS, region=region)
    exact = full_view(big_jpeg, size, MAX_PIXELS, region=region, draft=False)
    assert drafted.drafted and not exact.drafted
    np.testing.assert_array_equal(exact.pixels, reference(big_jpeg, size, region))
    assert drafted.pixels.shape == exact.pixels.shape
    assert drafted.geometry == exact.geometry
    assert pixel_cosine(drafted.pixels, exact.pixels) >= 0.9999
    assert np.abs(drafted.pixels.astype(int) - exact.pixels.astype(int)).mean() < 1.0


def test_draft_only_with_margin(big_jpeg: bytes) -> None:
    # 3000 px wide: at 3000 / (2 × DRAFT_MARGIN) and above, a half-scale decode would leave too little.
    size = 3000 // (2 * DRAFT_MARGIN) + 1
    view = full_view(big_jpeg, size, MAX_PIXELS)
    assert not view.drafted
    np.testing.assert_array_equal(view.pixels, reference(big_jpeg, size))
    small_region = full_view(big_jpeg, 224, MAX_PIXELS, region=(0, 0, 600, 400))  # too small to draft
    assert not small_region.drafted


def test_draft_with_exif_rotation(big_jpeg: bytes) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    img = Image.open(io.BytesIO(big_jpeg))
    payload = encode(img, quality=90, exif=exif.tobytes())
    region = (100, 200, 1500, 2300)  # upright: 2000 wide, 3000 high
    drafted = full_view(payload, 224, MAX_PIXELS, region=region)
    exact = reference(payload, 224, region)
    assert drafted.drafted and drafted.pixels.shape == exact.shape
    assert pixel_cosine(drafted.pixels, exact) >= 0.9999


def test_render_leaves_the_decoded_image_alone() -> None:
    payload = encode(photo("astronaut"), "PNG")
    img, size, box = load(payload, MAX_PIXELS, None)
    before = np.asarray(img).copy()
    whole = render(img, size, box, 224, (0, 0, *size))
    part = render(img, size, box, 224, (100, 50, 400, 300))
    np.testing.assert_array_equal(np.asarray(img), before)
    np.testing.assert_array_equal(whole.pixels, reference(payload, 224))
    np.testing.assert_array_equal(part.pixels, reference(payload, 224, (100, 50, 400, 300)))


def test_boxes_map_back_through_the_region() -> None:
    view = full_view(encode(photo("chelsea"), "PNG"), 224, MAX_PIXELS, region=(51, 20, 451, 220))
    assert view.pixels.shape[:2] == (112, 224)
    grid = (7, 14)  # a ViT on 112×224
    assert image_box((0, 0, 6, 13), grid, covered_geometry(view, (224, 112))) == [51, 20, 451, 220]
    assert image_box((0, 0, 0, 0), grid, view.geometry) == [51, 20, 80, 49]  # a 16-px cell: 28.6 px
    # A 100×67 view leaves 4 columns and 3 rows of pixels beyond a 6×4 grid of patches: dropped.
    small = full_view(encode(photo("chelsea"), "PNG"), 100, MAX_PIXELS)
    assert small.pixels.shape[:2] == (67, 100)
    geo = covered_geometry(small, (96, 64))
    assert geo.crop[2] == pytest.approx(451 * 96 / 100) and geo.crop[3] == pytest.approx(300 * 64 / 67)


def test_scales_minimum_side() -> None:
    assert min_side(224, (14, 14)) == MIN_SIDE_VIT == 16
    assert min_side(224, (7, 7)) == MIN_SIDE_CNN == 32
    scales = [1, 2**-0.5, 0.5]
    check_scales((64, 300), scales, 32)  # 64, 45, 32
    with pytest.raises(ViewTooSmall) as info:
        check_scales((63, 300), scales, 32)  # 0.5 → 31
    assert status_of(info.value) == 400 and "scale 0.5" in str(info.value) and "31 px" in str(info.value)
    check_scales((45, 23), [1, 2**-0.5], 16)  # 23 · 0.7071 = 16.26
    with pytest.raises(ViewTooSmall):
        check_scales((45, 22), [1, 2**-0.5], 16)


def _resize_graph() -> object:
    """The export's rescale alone: a float32 scalar `scale` → Resize scales [1, 1, s, s] (linear,
    half_pixel), in a real onnxruntime session."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "H", "W"])
    scale = helper.make_tensor_value_info("scale", TensorProto.FLOAT, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    lead = numpy_helper.from_array(np.ones(2, np.float32), "lead")
    one = numpy_helper.from_array(np.ones(1, np.int64), "one")
    nodes = [
        helper.make_node("Reshape", ["scale", "one"], ["s1"]),
        helper.make_node("Concat", ["lead", "s1", "s1"], ["scales"], axis=0),
        helper.make_node(
            "Resize", ["x", "", "scales"], ["y"], mode="linear", coordinate_transformation_mode="half_pixel"
        ),
    ]
    graph = helper.make_graph(nodes, "rescale", [x, scale], [y], initializer=[lead, one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# (H, W, s): float32(s)·H rounds up onto an integer where PyTorch's float64 product lies just below
# it (90·0.7 = 62.99999999999999), with sides that are exact in both, and the paper's 1/√2 and 1/2.
BOUNDARIES = [
    (90, 224, 0.7),
    (170, 512, 0.7),
    (1460, 1024, 0.7),
    (180, 101, 0.35),
    (340, 512, 0.35),
    (338, 512, 2**-0.5),
    (512, 384, 2**-0.5),
    (63, 300, 0.5),
    (45, 23, 0.7071),
]


def test_0_7071_is_the_papers_inverse_square_root_of_two() -> None:
    """Scales are identified to four decimals; 0.7071 is computed as 1/√2, as the paper's code runs it:
    at 338 rows PyTorch gives 239 for 1/√2 and 238 for 0.7071."""
    assert exact_scale(0.7071) == exact_scale(2**-0.5) == 2**-0.5 and exact_scale(0.5) == 0.5
    assert scaled_side(338, 0.7071) == 239 == scaled_side(338, 2**-0.5)


@pytest.mark.parametrize(("h", "w", "s"), BOUNDARIES)
def test_rescaled_sides_agree_with_pytorch_at_boundaries(h: int, w: int, s: float) -> None:
    """The paper's `F.interpolate(x, scale_factor=s)` sizes in float64; onnxruntime's Resize in float32.
    `scaled_side` (the minimum-side check) and the graph fed `graph_scale` both give PyTorch's sides."""
    want = tuple(
        torch.nn.functional.interpolate(
            torch.zeros(1, 1, h, w), scale_factor=exact_scale(s), mode="bilinear"
        ).shape[2:]
    )
    assert (scaled_side(h, s), scaled_side(w, s)) == want
    fed = graph_scale((h, w), s)
    assert (
        abs(float(fed) - exact_scale(s)) < 4e-7
    )  # a few float32 ulps: sampling moves by under 1e-6 of a pixel
    assert (graph_side(h, fed), graph_side(w, fed)) == want
    got = _resize_graph().run(None, {"x": np.zeros((1, 1, h, w), np.float32), "scale": np.asarray(fed)})[0]
    assert got.shape[2:] == want


def test_float32_scale_alone_misses_pytorch_at_a_boundary() -> None:
    """Without `graph_scale` the graph would give 63 rows where the paper's code gives 62."""
    x = np.zeros((1, 1, 90, 224), np.float32)
    got = _resize_graph().run(None, {"x": x, "scale": np.asarray(0.7, np.float32)})[0]
    assert got.shape[2] == graph_side(90, np.float32(0.7)) == 63 and scaled_side(90, 0.7) == 62
    # One scale for both sides: 100 · 0.35 = 35 exactly, 180 · 0.35 a hair under 63; no float32 gives both.
    assert graph_scale((180, 100), 0.35) == np.float32(0.35)

"""The resize and crop shared between two threads against one `Image.resize` call: the same pixels for
either pass order, any box (JPEG draft decoding leaves fractional ones), both filters, and any state of
the helper pool (busy, shut down)."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import skimage.data as data
from PIL import Image

from simpool_serve.service.engine import split_resize
from simpool_serve.service.engine.preprocess import crop_offsets, resized_size
from simpool_serve.service.engine.split_resize import agrees, resize_crop, vertical_first

FILTERS = (Image.Resampling.BICUBIC, Image.Resampling.BILINEAR)


@pytest.fixture(scope="module")
def helper() -> ThreadPoolExecutor:
    with ThreadPoolExecutor(1) as pool:
        yield pool


def one_call(
    img: Image.Image, size: tuple[int, int], box: tuple, crop: tuple[int, int, int], f: int
) -> np.ndarray:
    left, top, s = crop
    return np.asarray(img.resize(size, f, box).crop((left, top, left + s, top + s)))


def cases(n: int, seed: int) -> list[tuple[Image.Image, tuple[int, int], tuple, tuple[int, int, int], int]]:
    """`n` photographs at random sizes (a fifth of them tall, a third with a fractional box), each with
    the shorter side resized to a random target and centre-cropped, as `prepare` does."""
    rng = random.Random(seed)
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    out = []
    while len(out) < n:
        w, h = rng.randint(40, 900), rng.randint(40, 900)
        if len(out) % 5 == 0:
            h = rng.randint(900, 1600)
        img = Image.fromarray(photos[len(out) % len(photos)]).resize((w, h))
        shorter, side = rng.choice([256, 232, 160, 384, 36]), rng.choice([224, 192, 128, 32])
        side = min(side, shorter)
        box, original = (0.0, 0.0, float(w), float(h)), (w, h)
        if len(out) % 3 == 0:  # drafted at 1/4: the box is the original's part of the decoded image
            box = (rng.random() * 2, rng.random() * 2, w - rng.random() * 3, h - rng.random() * 3)
            original = (round(box[2] - box[0]) * 4, round(box[3] - box[1]) * 4)
        size = resized_size(*original, shorter)
        left, top = crop_offsets(*size, side)
        if left >= 0 and top >= 0:
            out.append((img, size, box, (left, top, side), rng.choice(FILTERS)))
    return out


def test_random_shapes_and_boxes_give_the_one_calls_pixels(helper: ThreadPoolExecutor) -> None:
    checked = cases(120, seed=0)
    orders = {vertical_first(img.size, size) for img, size, *_ in checked}
    assert orders == {True, False}  # both pass orders are exercised
    for img, size, box, crop, f in checked:
        got = resize_crop(img, size, box, crop, f, helper)
        np.testing.assert_array_equal(
            got, one_call(img, size, box, crop, f), err_msg=f"{img.size} {size} {box}"
        )


def test_a_busy_helper_costs_nothing_but_the_queue_entry() -> None:
    """The helper's one thread is held: every band handed to it is taken back, the answer is the same."""
    release = threading.Event()
    with ThreadPoolExecutor(1) as busy:
        busy.submit(release.wait)
        img, size, box, crop, f = cases(1, seed=1)[0]
        got = resize_crop(img, size, box, crop, f, busy)
        release.set()
    np.testing.assert_array_equal(got, one_call(img, size, box, crop, f))


def test_a_shut_down_helper_leaves_the_caller_to_do_it_all() -> None:
    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    img, size, box, crop, f = cases(1, seed=2)[0]
    np.testing.assert_array_equal(
        resize_crop(img, size, box, crop, f, pool), one_call(img, size, box, crop, f)
    )


def test_agrees_says_when_the_pass_order_rule_is_not_this_pillows(
    helper: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert agrees(helper)
    monkeypatch.setattr(split_resize, "vertical_first", lambda *_: False)  # Pillow 12's rule
    assert not agrees(helper)

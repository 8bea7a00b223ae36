"""Checking uploads: any well-formed image is kept, anything cut short or appended to is not."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from plugins.image_proxy.validation import InvalidImage, inspect

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}


@st.composite
def images(draw) -> tuple[bytes, str, tuple[int, int]]:
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    size = (draw(st.integers(1, 80)), draw(st.integers(1, 80)))
    mode = draw(st.sampled_from(["RGB", "L", "P"] if fmt != "JPEG" else ["RGB", "L"]))
    image = Image.new(mode, size)
    pixels = draw(st.lists(st.integers(0, 255), min_size=1, max_size=64))
    for index, value in enumerate(pixels):
        xy = (index * 7 % size[0], index * 13 % size[1])
        image.putpixel(xy, value if mode != "RGB" else (value, 255 - value, value // 2))
    options = {}
    if fmt == "JPEG":
        options = {"progressive": draw(st.booleans()), "quality": draw(st.integers(5, 95))}
    frames = draw(st.integers(1, 3)) if fmt in ("GIF", "WEBP") else 1
    out = io.BytesIO()
    extra = [image.point(lambda v, n=n: (v + 40 * n) % 256) for n in range(1, frames)]
    image.save(out, fmt, save_all=frames > 1, append_images=extra, **options)
    return out.getvalue(), FORMATS[fmt], size


@settings(max_examples=120, deadline=None)
@given(images())
def test_every_well_formed_image_is_accepted_as_what_it_is(case):
    data, content_type, size = case
    info = inspect(data, filename=None, declared_type=None)
    assert (info.content_type, (info.width, info.height)) == (content_type, size)


@settings(max_examples=120, deadline=None)
@given(images(), st.binary(min_size=1, max_size=64))
def test_anything_after_the_end_of_an_image_is_refused(case, suffix):
    data, _, _ = case
    with pytest.raises(InvalidImage):
        inspect(data + suffix, filename=None, declared_type=None)


@settings(max_examples=120, deadline=None)
@given(images(), st.data())
def test_an_image_cut_short_is_refused(case, data):
    image, _, _ = case
    cut = data.draw(st.integers(0, len(image) - 1))
    with pytest.raises(InvalidImage):
        inspect(image[:cut], filename=None, declared_type=None)

"""Email chart images: PNGs drawn by kaleido on the system Chromium, and the check that refuses broken or blank PNGs."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import plotly.graph_objects as go
import pytest

from spm_lib.deliver.images import RELOAD_EVERY, Chart, Exporter, ImageError, check_png, png_size


# ---------------------------------------------------------------- hand-made PNGs (RGB, 8 bit)
def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def _filtered(row: bytes, prev: bytes, kind: int, bpp: int = 3) -> bytes:
    """One scanline encoded with PNG filter `kind` (the encoder's side, written out for the test)."""
    left = lambda i, r: r[i - bpp] if i >= bpp else 0  # noqa: E731
    if kind == 0:
        out = list(row)
    elif kind == 1:
        out = [row[i] - left(i, row) for i in range(len(row))]
    elif kind == 2:
        out = [row[i] - prev[i] for i in range(len(row))]
    elif kind == 3:
        out = [row[i] - (left(i, row) + prev[i]) // 2 for i in range(len(row))]
    else:
        out = [row[i] - _paeth(left(i, row), prev[i], left(i, prev)) for i in range(len(row))]
    return bytes([kind]) + bytes(v & 0xFF for v in out)


def make_png(pixels: list[list[tuple[int, int, int]]], kind: int) -> bytes:
    """An RGB PNG of `pixels` (rows of (r, g, b)), every scanline written with filter `kind`."""
    height, width = len(pixels), len(pixels[0])
    raw, prev = b"", bytes(width * 3)
    for line in pixels:
        row = bytes(v for px in line for v in px)
        raw += _filtered(row, prev, kind)
        prev = row
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw))
            + _chunk(b"IEND", b""))


WHITE, INK = (255, 255, 255), (40, 40, 40)


@pytest.mark.parametrize("kind", [0, 1, 2, 3, 4])
def test_a_single_colour_png_is_blank_whatever_the_filter(kind: int) -> None:
    blank = make_png([[WHITE] * 5 for _ in range(4)], kind)
    with pytest.raises(ImageError, match="blank"):
        check_png(blank)


@pytest.mark.parametrize("kind", [0, 1, 2, 3, 4])
def test_one_dark_pixel_in_the_last_row_is_a_drawing(kind: int) -> None:
    pixels = [[WHITE] * 5 for _ in range(4)]
    pixels[3][4] = INK
    check_png(make_png(pixels, kind))  # no error


def test_broken_pngs_are_refused_with_the_reason() -> None:
    good = make_png([[WHITE, INK], [INK, WHITE]], 4)
    assert png_size(good) == (2, 2)
    with pytest.raises(ImageError, match="empty"):
        check_png(b"")
    with pytest.raises(ImageError, match="not a PNG"):
        check_png(b"GIF89a" + good[6:])
    with pytest.raises(ImageError, match="truncated|IEND"):
        check_png(good[:-15])
    flipped = bytearray(good)
    flipped[40] ^= 0xFF  # a byte inside the IDAT chunk: its CRC no longer matches
    with pytest.raises(ImageError, match="CRC"):
        check_png(bytes(flipped))


# ---------------------------------------------------------------- the real exporter (one browser for the module)
@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    with Exporter() as ex:
        yield ex


def test_a_bar_chart_becomes_a_checked_png_of_the_asked_size(exporter: Exporter) -> None:
    fig = go.Figure(go.Bar(x=["Booked", "Target"], y=[640, 700]), layout={"title": {"text": "Bookings"}})
    data = exporter.png(fig, 400, 250, scale=2)
    assert data.startswith(b"\x89PNG")
    assert png_size(data) == (800, 500)  # layout pixels × scale
    check_png(data)


def test_figure_json_text_is_accepted(exporter: Exporter) -> None:
    fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2]))
    assert png_size(exporter.png(fig.to_json(), 300, 200)) == (300, 200)


def test_a_figure_that_draws_nothing_is_refused_as_blank(exporter: Exporter) -> None:
    nothing = go.Figure(layout={"paper_bgcolor": "white", "plot_bgcolor": "white",
                                "xaxis": {"visible": False}, "yaxis": {"visible": False}})
    with pytest.raises(ImageError, match="blank"):
        exporter.png(nothing, 300, 200)


def test_not_a_figure_is_a_clear_error(exporter: Exporter) -> None:
    with pytest.raises(ImageError, match="figure"):
        exporter.png("{not json", 300, 200)


def test_many_charts_at_once_each_checked_on_its_own(exporter: Exporter) -> None:
    bars = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]))
    nothing = go.Figure(layout={"paper_bgcolor": "white", "plot_bgcolor": "white",
                                "xaxis": {"visible": False}, "yaxis": {"visible": False}})
    line = go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2]))
    out = exporter.pngs([Chart(bars, 300, 200), Chart(nothing, 300, 200), Chart("{not json", 300, 200),
                         Chart(line, 200, 100, 2)])
    assert isinstance(out[0], bytes) and png_size(out[0]) == (300, 200)
    assert isinstance(out[1], ImageError) and "blank" in str(out[1])
    assert isinstance(out[2], ImageError) and "JSON" in str(out[2])
    assert isinstance(out[3], bytes) and png_size(out[3]) == (400, 200)


def test_charts_beyond_the_reload_interval_come_out_right_beside_a_broken_one(exporter: Exporter) -> None:
    n = RELOAD_EVERY * 2 + 1  # each tab draws past its reload point
    charts = [Chart(go.Figure(go.Bar(x=["a", "b"], y=[1, i + 2])), 200, 100 + i) for i in range(n)]
    charts[3] = Chart("{not json", 200, 103)
    out = exporter.pngs(charts)
    assert isinstance(out[3], ImageError)
    assert [png_size(o) for i, o in enumerate(out) if i != 3] == [(200, 100 + i) for i in range(n) if i != 3]
    for o in out[:3] + out[4:]:
        check_png(o)  # type: ignore[arg-type]

"""Static PNG images of plotly figures for email, through plotly's export engine (kaleido 1.x) on the system Chromium.

One browser serves a whole batch: `with Exporter() as ex: ex.png(fig, 640, 320)`, or many figures at once with
`ex.pngs([...])`, drawn concurrently in `tabs` browser tabs. Kaleido reloads a tab's page after every image, which
costs as much as drawing it; plotly's `toImage` draws each figure in a fresh element it removes afterwards, so the
exporter reloads a tab only every RELOAD_EVERY images, and after every image once any chart failed (kaleido's own
behaviour, which is also what a kaleido release without the overridden hook gives).

Kaleido is asyncio code; the exporter runs it on a private event loop in one background thread, so callers stay
synchronous (and work inside Jupyter, whose own loop is already running). Every image is checked (`check_png`): an
empty, broken or blank (single-colour) PNG is an ImageError instead of reaching anyone's inbox.

Browser: kaleido (through choreographer) would take a Chrome downloaded by `kaleido_get_chrome` first, then
$BROWSER_PATH, then `chromium`/`google-chrome` on PATH. Reports use Debian's chromium: the exporter passes its
path explicitly ($BROWSER_PATH when set, else /usr/bin/chromium, else the first Chromium on PATH).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import kaleido
import numpy as np
from plotly.io._utils import validate_coerce_fig_to_dict

from spm_lib.errors import SpmError
from spm_lib.util.tasks import daemon_thread

SYSTEM_CHROMIUM = "/usr/bin/chromium"
TABS = 2  # browser tabs drawing at once (2 cores: one draws while the other reloads)
RELOAD_EVERY = 25  # a tab's page is reloaded after this many images (kaleido: after each, as long as a drawing)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
DEFAULT_FONT_PX = 12  # plotly's font size where a figure sets none


class ImageError(SpmError):
    """A chart could not be turned into a usable image (no browser, export failed, empty or blank PNG)."""


def browser_path() -> str:
    """The Chromium executable to draw with: $BROWSER_PATH, else /usr/bin/chromium, else Chromium on PATH."""
    env = os.environ.get("BROWSER_PATH")
    if env:
        if not (Path(env).is_file() and os.access(env, os.X_OK)):
            raise ImageError(f"BROWSER_PATH={env} is not an executable file; point it at Chromium or unset it")
        return env
    if os.access(SYSTEM_CHROMIUM, os.X_OK):
        return SYSTEM_CHROMIUM
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    raise ImageError("no Chromium found for the email charts: install it (Debian/Ubuntu: `sudo apt-get install "
                     "chromium`) or set BROWSER_PATH to a Chrome/Chromium executable")


def _figure_dict(fig: Any) -> dict[str, Any]:
    """A plotly figure, figure dict or figure JSON text as a validated figure dict."""
    if isinstance(fig, str | bytes):
        try:
            fig = json.loads(fig)
        except ValueError as e:
            raise ImageError(f"the figure JSON cannot be read: {e}") from None
    try:
        return dict(validate_coerce_fig_to_dict(fig, True))
    except ValueError as e:
        raise ImageError(f"not a plotly figure: {str(e)[:300]}") from None


def _kaleido_class() -> type:
    """kaleido.Kaleido, reloading a tab after every RELOAD_EVERY images rather than after each one."""
    class Kaleido(kaleido.Kaleido):
        spm_failed = False

        async def _return_kaleido_tab(self, tab: Any) -> None:
            drawn = getattr(tab, "spm_drawn", 0) + 1
            tab.spm_drawn = drawn
            if self.spm_failed or drawn % RELOAD_EVERY == 0:
                await super()._return_kaleido_tab(tab)  # reload, then back in the queue
            else:
                await self.tabs_ready.put(tab)

    return Kaleido


class Chart(NamedTuple):
    """One image to draw: a figure (plotly Figure, dict or JSON text) at width × height layout pixels, × scale."""

    fig: Any
    width: int
    height: int
    scale: float = 1.0


class Exporter:
    """One headless Chromium (kaleido) that turns plotly figures into PNG bytes; use it as a context manager."""

    def __init__(self, *, timeout_s: float = 60.0, browser: str | None = None, tabs: int = TABS) -> None:
        self.timeout_s = timeout_s
        self.browser = browser
        self.tabs = max(1, tabs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._kaleido: Any = None

    def __enter__(self) -> Exporter:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _run(self, coro: Any, timeout: float) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def open(self) -> None:
        """Start the browser (once)."""
        if self._kaleido is not None:
            return
        path = self.browser or browser_path()
        self._loop = asyncio.new_event_loop()
        self._thread = daemon_thread(self._loop.run_forever, "spm-kaleido")

        from spm_lib.batch.export import PLOTLY_JS  # here: importing export (nbconvert) takes seconds

        async def start() -> Any:
            k = _kaleido_class()(n=self.tabs, timeout=self.timeout_s, mathjax=False, plotlyjs=str(PLOTLY_JS), path=path)
            await k.open()
            return k

        try:
            self._kaleido = self._run(start(), self.timeout_s + 30)
        except Exception as e:
            self._stop_loop()
            raise ImageError(f"Chromium ({path}) could not be started for the email charts: "
                             f"{type(e).__name__}: {str(e)[:300]}") from e

    def png(self, fig: Any, width: int, height: int, scale: float = 1.0) -> bytes:
        """The figure (plotly Figure, dict or JSON text) as checked PNG bytes of width × height layout pixels."""
        (result,) = self.pngs([Chart(fig, width, height, scale)])
        if isinstance(result, ImageError):
            raise result
        return result

    def pngs(self, charts: Sequence[Chart]) -> list[bytes | ImageError]:
        """Every chart as checked PNG bytes, drawn concurrently; a chart that fails gives its ImageError instead."""
        if self._kaleido is None:
            raise ImageError("the exporter is not open: use it as `with Exporter() as ex:`")
        specs: list[dict[str, Any] | ImageError] = []
        for c in charts:
            try:
                specs.append(_figure_dict(c.fig))
            except ImageError as e:
                specs.append(e)
        k = self._kaleido

        async def draw(spec: dict[str, Any] | ImageError, c: Chart) -> bytes | ImageError:
            if isinstance(spec, ImageError):
                return spec
            opts = {"format": "png", "width": c.width, "height": c.height, "scale": c.scale}
            try:
                return bytes(await k.calc_fig(spec, opts=opts))
            except Exception as e:  # noqa: BLE001 one chart's failure is that chart's error
                k.spm_failed = True  # from now on every tab is reloaded after each image, as kaleido does
                return ImageError(f"the chart could not be exported: {type(e).__name__}: {str(e)[:300]}")

        async def draw_all() -> list[bytes | ImageError]:
            return list(await asyncio.gather(*(draw(s, c) for s, c in zip(specs, charts, strict=True))))

        try:
            drawn = self._run(draw_all(), (self.timeout_s + 10) * (len(charts) // self.tabs + 1))
        except Exception as e:
            raise ImageError(f"the charts could not be exported: {type(e).__name__}: {str(e)[:300]}") from e
        return [_checked(d) for d in drawn]

    def close(self) -> None:
        """Close the browser and its event loop."""
        if self._kaleido is not None:
            try:
                self._run(self._kaleido.close(), 30)
            except Exception:  # noqa: BLE001 closing a browser that already died is fine
                pass
            self._kaleido = None
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(30)
            self._loop.close()
        self._loop, self._thread = None, None


# ---------------------------------------------------------------- text readable on a phone
def with_min_font(fig: Any, size: float) -> dict[str, Any]:
    """A copy of the figure (plotly Figure, dict or JSON text) with every font size below `size` raised to it (the
    figure's base font too; text inside a bar that would need shrinking below it is left out), so text drawn at a
    phone's width stays readable; marker and line sizes are kept."""
    spec = _floor_fonts(_figure_dict(fig), size, in_font=False)
    layout = spec.setdefault("layout", {})
    base = dict(layout.get("font") or {})
    base["size"] = max(float(base.get("size") or DEFAULT_FONT_PX), size)
    layout["font"] = base
    layout["uniformtext"] = {"minsize": size, "mode": "hide"}  # a bar's text that fits only smaller is left out
    return spec


def _floor_fonts(node: Any, size: float, *, in_font: bool) -> Any:
    """`node` with the `size` of every font dict (a value under a key ending in 'font') raised to at least `size`."""
    if isinstance(node, dict):
        return {k: (_raised(v, size) if in_font and k == "size" else
                    _floor_fonts(v, size, in_font=isinstance(k, str) and k.endswith("font")))
                for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_floor_fonts(v, size, in_font=in_font) for v in node]
    return node


def _raised(value: Any, size: float) -> Any:
    if isinstance(value, list | tuple):
        return [_raised(v, size) for v in value]
    return max(float(value), size) if isinstance(value, int | float) and not isinstance(value, bool) else value


# ---------------------------------------------------------------- checking a PNG
def _checked(data: bytes | ImageError) -> bytes | ImageError:
    """`data` when it is a usable PNG, else the ImageError saying why not."""
    if isinstance(data, ImageError):
        return data
    try:
        check_png(data)
    except ImageError as e:
        return e
    return data


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (type, payload) chunks of a PNG, each CRC-checked."""
    out, pos = [], len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise ImageError("invalid PNG: truncated chunk header")
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise ImageError(f"invalid PNG: chunk {kind!r} is truncated")
        payload = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4:end])
        if zlib.crc32(kind + payload) != crc:
            raise ImageError(f"invalid PNG: chunk {kind!r} fails its CRC")
        out.append((kind, payload))
        pos = end
        if kind == b"IEND":
            break
    return out


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG in pixels (from its header)."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < 24:
        raise ImageError("invalid PNG: no PNG signature")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _paeth_row(raw: bytes, prev: bytes, bpp: int) -> bytes:
    """Undo the Paeth filter of one scanline (sequential by nature)."""
    out = bytearray(raw)
    for i in range(len(out)):
        a = out[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
        out[i] = (out[i] + pred) & 0xFF
    return bytes(out)


def _average_row(raw: bytes, prev: bytes, bpp: int) -> bytes:
    """Undo the Average filter of one scanline."""
    out = bytearray(raw)
    for i in range(len(out)):
        a = out[i - bpp] if i >= bpp else 0
        out[i] = (out[i] + ((a + prev[i]) >> 1)) & 0xFF
    return bytes(out)


def _unfilter(kind: int, raw: bytes, prev: bytes, bpp: int) -> bytes:
    """One scanline with its PNG filter undone."""
    if kind == 0:
        return raw
    if kind == 1:  # Sub: a running sum per byte of the pixel, modulo 256
        return np.cumsum(np.frombuffer(raw, np.uint8).reshape(-1, bpp), axis=0, dtype=np.uint8).tobytes()
    if kind == 2:  # Up
        return (np.frombuffer(raw, np.uint8) + np.frombuffer(prev, np.uint8)).tobytes()
    if kind == 3:
        return _average_row(raw, prev, bpp)
    if kind == 4:
        return _paeth_row(raw, prev, bpp)
    raise ImageError(f"invalid PNG: unknown scanline filter {kind}")


def check_png(data: bytes) -> None:
    """Raise ImageError when `data` is empty, not a well-formed PNG, or blank (every pixel the same colour)."""
    chunks, (width, height, bpp, colour) = _png_layout(data)
    pixels = _png_pixels(chunks, width, height, bpp)
    if colour == 3 and b"PLTE" not in dict(chunks):
        raise ImageError("invalid PNG: a palette image without a PLTE chunk")
    _check_not_blank(pixels, width, height, bpp)


def _png_layout(data: bytes) -> tuple[list[tuple[bytes, bytes]], tuple[int, int, int, int]]:
    """The chunks of PNG `data` and its (width, height, bytes per pixel, colour type); ImageError when it is not a
    PNG of the layout Chromium writes."""
    if not data:
        raise ImageError("the chart image is empty (0 bytes)")
    if not data.startswith(PNG_SIGNATURE):
        raise ImageError("the chart image is not a PNG (wrong signature)")
    chunks = _chunks(data)
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise ImageError("invalid PNG: the IHDR header chunk is missing")
    if chunks[-1][0] != b"IEND":
        raise ImageError("invalid PNG: no IEND chunk (the file is truncated)")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if width == 0 or height == 0:
        raise ImageError(f"the chart image has no pixels ({width}×{height})")
    if colour not in _CHANNELS or depth not in (8, 16) or interlace:
        raise ImageError(f"unsupported PNG layout (colour type {colour}, bit depth {depth}, interlace {interlace}): "
                         "expected the 8/16-bit non-interlaced PNG Chromium writes")
    return chunks, (width, height, _CHANNELS[colour] * depth // 8, colour)


def _png_pixels(chunks: list[tuple[bytes, bytes]], width: int, height: int, bpp: int) -> bytes:
    """The decompressed scanlines of a PNG (each a filter byte and width × bpp bytes); ImageError when corrupt."""
    try:
        pixels = zlib.decompress(b"".join(p for k, p in chunks if k == b"IDAT"))
    except zlib.error as e:
        raise ImageError(f"invalid PNG: the image data cannot be decompressed ({e})") from None
    stride = width * bpp
    if len(pixels) != height * (stride + 1):
        raise ImageError(f"invalid PNG: {len(pixels)} bytes of pixels for {width}×{height}, "
                         f"expected {height * (stride + 1)}")
    return pixels


def _check_not_blank(pixels: bytes, width: int, height: int, bpp: int) -> None:
    """ImageError when every pixel of the scanlines `pixels` has the same colour."""
    stride = width * bpp
    prev = bytes(stride)
    first: bytes | None = None
    for y in range(height):  # stops at the first scanline that is not the blank colour
        start = y * (stride + 1)
        row = _unfilter(pixels[start], pixels[start + 1:start + 1 + stride], prev, bpp)
        if first is None:
            first = row[:bpp]
        if row != first * width:
            return
        prev = row
    raise ImageError(f"the chart image is blank: all {width}×{height} pixels have the same colour "
                     f"(#{first.hex() if first else ''}); the figure drew nothing")

"""The HTML report: self-contained, every figure present, and it renders in headless Chromium."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from driftsim.capacity.pool import SerialPool
from driftsim.capacity.report import write_report
from driftsim.capacity.results import ResultSet
from driftsim.capacity.slo import targets_from_scenario
from driftsim.capacity.spec import Grid, expand
from tests.test_capacity_plan import small_scenario

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="module")
def report_path(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    grid = Grid(scenario=small_scenario(tmp), axes={"rate_scale": [0.5, 1.0], "policy": ["fifo", "sjf"]}, seeds=[0, 1],
                fixed={"gateway": {"max_outstanding": 4}})  # a cap, so the two policies differ  # fmt: skip
    specs = expand(grid)
    specs = expand(grid, targets=tuple(targets_from_scenario(specs[0].scenario)))
    outs = SerialPool().run(specs)
    rs = ResultSet.from_outcomes(outs, meta={"axes": grid.axes, "seeds": [0, 1], "executor": "serial", "wall_s": 1.0},
                                 prices={"a100-llama-3.1-8b": 1.8})  # fmt: skip
    rs.save(tmp / "results")
    return write_report(tmp / "results")


def test_report_is_self_contained_with_every_figure(report_path):
    html = report_path.read_text()
    assert report_path.name == "report.html" and report_path.stat().st_size > 1_000_000  # plotly.js inlined
    assert not re.search(r"<script[^>]+src=", html)  # no external scripts: opens offline, no server
    assert html.count('class="plotly-graph-div"') == 6
    for title in ("p99 TTFT (s) vs rate_scale per tenant", "p99 E2E (s) vs rate_scale", "SLO attainment vs rate_scale",
                  "Latency CDF per tenant", "waiting requests (queue depth)", "KV cache use (estimated",
                  "$ per million output tokens", "derived from per-request times"):  # fmt: skip
        assert title in html, title
    assert "policy=fifo" in html and "policy=sjf" in html  # one line per policy
    assert "SLO" in html and "chat" in html and "batch" in html
    assert "mean ± 95 % t-interval" in html


def _png_pixels(path: Path) -> np.ndarray:
    """Decode an 8-bit RGB/RGBA PNG (what Chromium writes) into an array, without extra dependencies."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        f, line = raw[y * (stride + 1)], np.frombuffer(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)], dtype=np.uint8).astype(np.int32)
        cur = line.copy()
        if f == 1:
            for x in range(channels, stride):
                cur[x] = (cur[x] + cur[x - channels]) & 255
        elif f == 2:
            cur = (line + prev) & 255
        elif f == 3:
            for x in range(stride):
                left = cur[x - channels] if x >= channels else 0
                cur[x] = (line[x] + (left + prev[x]) // 2) & 255
        elif f == 4:
            for x in range(stride):
                a = cur[x - channels] if x >= channels else 0
                b, c = prev[x], prev[x - channels] if x >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                cur[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out[y] = cur
        prev = cur
    return out.reshape(height, width, channels)[:, :, :3]


def _chromium(*args: str, user_dir: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={user_dir}", "--virtual-time-budget=1000"]  # fmt: skip
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium); .ci/run installs it")
def test_report_renders_in_headless_chromium(report_path, tmp_path):
    url = report_path.resolve().as_uri()
    dom = _chromium("--dump-dom", url, user_dir=tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert html.count('class="plot-container plotly"') == 6  # every figure was drawn by plotly.js
    assert html.count('class="main-svg"') >= 12 and "<path" in html  # SVG with actual lines
    png = tmp_path / "report.png"
    shot = _chromium(f"--screenshot={png}", "--window-size=1280,1400", url, user_dir=tmp_path / "profile-png")
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    px = _png_pixels(png)
    assert px.shape[:2] == (1400, 1280)
    colours = np.unique(px[::4, ::4].reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, plot backgrounds, several coloured lines: not a blank page
    blue = np.all(np.abs(px.astype(int) - [0x1F, 0x77, 0xB4]) < 30, axis=-1).sum()
    red = np.all(np.abs(px.astype(int) - [0xD6, 0x27, 0x28]) < 30, axis=-1).sum()
    assert blue > 50 and red > 50  # the first two series' line colours are on screen

"""Finance-domain prompts: small charts rendered from matplotlib's sample ``Stocks.csv``.

Each chart shows one ticker's 12 monthly closing prices in one calendar year, as a line or
a bar chart; the (ticker, year) pair is the *source image id* that decides the split, so the
same data never appears in two splits. Questions ask for exact numbers ("What was the
closing price of AAPL in March 2005?", gold ``"41.67"``, facts ``{"value": 41.67, ...}``)
or the change over the year. Charts are drawn with PIL and cached, since many questions share a chart.
"""

from __future__ import annotations

import calendar
import csv
import functools
import random
from typing import Any

from PIL import Image, ImageDraw

from corpus.errors import SpecError
from corpus.splits import assign_splits
from corpus.types import IMAGE_SIZE, Prompt

CHART_KINDS = ("line", "bar")


@functools.lru_cache(maxsize=1)
def _series() -> dict[tuple[str, int], list[float]]:
    """(ticker, year) -> 12 monthly closes, only for years with all 12 months present."""
    from matplotlib import cbook

    monthly: dict[tuple[str, int], dict[int, float]] = {}
    with open(str(cbook.get_sample_data("Stocks.csv", asfileobj=False)), encoding="utf-8") as handle:
        rows = [line for line in handle if not line.startswith("#")]
    for row in csv.DictReader(rows):
        year, month, day = (int(x) for x in row["Date"].split("-"))
        if day != 1:
            continue
        for ticker, price in row.items():
            if ticker != "Date" and price:
                monthly.setdefault((ticker.lstrip("^"), year), {})[month] = round(float(price), 2)
    return {key: [m[i] for i in range(1, 13)] for key, m in sorted(monthly.items()) if len(m) == 12}


@functools.lru_cache(maxsize=2048)
def _chart(ticker: str, year: int, kind: str) -> Image.Image:
    """Draw the chart straight onto a 64x64 canvas with PIL (sub-millisecond, pixel-exact;
    a matplotlib figure costs ~15 ms each and blurs when shrunk to 64 pixels)."""
    values = _series()[(ticker, year)]
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = 6, 4, IMAGE_SIZE - 3, IMAGE_SIZE - 6
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")  # axes
    low, high = min(values), max(values)
    low = low - 0.1 * (high - low + 1e-9) if kind == "line" else 0.0
    span = max(high - low, 1e-9)
    step = (right - left - 2) / 12

    def y(value: float) -> float:
        return bottom - 1 - (value - low) / span * (bottom - top - 2)

    if kind == "bar":
        for i, value in enumerate(values):
            x0 = left + 2 + i * step
            draw.rectangle([(x0, y(value)), (x0 + step - 2, bottom - 1)], fill="#2a6fb0")
    else:
        points = [(left + 2 + (i + 0.5) * step, y(v)) for i, v in enumerate(values)]
        draw.line(points, fill="#b0302a", width=1)
        for px, py in points:
            draw.point((px, py), fill="black")
    return img


def _question(ticker: str, year: int, kind: str, rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    values = _series()[(ticker, year)]
    if rng.random() < 0.8:
        month = rng.randrange(12)
        name = calendar.month_name[month + 1]
        value = values[month]
        text = f"The {kind} chart shows {ticker} in {year}. What was the closing price of {ticker} in {name} {year}?"
        facts = {"kind": "price", "value": value, "unit": "USD", "ticker": ticker, "year": year, "month": name}
        return f"q{month:02d}", text, facts
    value = round(values[11] - values[0], 2)
    text = (f"The {kind} chart shows {ticker} in {year}. By how much did the closing price of {ticker} "
            f"change from January to December {year}?")
    facts = {"kind": "change", "value": value, "unit": "USD", "ticker": ticker, "year": year}
    return "qchg", text, facts


def finance_prompts(n: int, split: str, rng: random.Random) -> list[Prompt]:
    """``n`` distinct chart prompts whose (ticker, year) belongs to ``split``."""
    owner = assign_splits(f"fin-{t}-{y}" for t, y in _series())
    charts = [key for key in _series() if owner[f"fin-{key[0]}-{key[1]}"] == split]
    capacity = len(charts) * len(CHART_KINDS) * 13
    if n > capacity // 2:
        raise SpecError(f"at most {capacity // 2} finance prompts in split {split!r}, asked for {n}")
    out: list[Prompt] = []
    seen: set[str] = set()
    while len(out) < n:
        ticker, year = rng.choice(charts)
        kind = rng.choice(CHART_KINDS)
        suffix, text, facts = _question(ticker, year, kind, rng)
        prompt_id = f"fin-{ticker}-{year}-{kind}-{suffix}"
        if prompt_id in seen:
            continue
        seen.add(prompt_id)
        gold = f"{facts['value']:.2f}"
        out.append(Prompt(prompt_id, _chart(ticker, year, kind), text, "finance", gold, facts))
    return out


def source_id(prompt_id: str) -> str:
    """The (ticker, year) behind a finance prompt id (for split-disjointness checks)."""
    return "-".join(prompt_id.split("-")[:3])

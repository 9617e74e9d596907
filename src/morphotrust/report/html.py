"""Self-contained HTML pages: inline CSS, images as base64 PNG data URIs, nothing fetched from the network."""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..images import COMPOSITE_COLOURS
from ..io import write_text

# What RxRx1's six channels show (w1..w6) and the short names CellProfiler measurements use.
STAIN_LABELS = (
    ("DNA", "Hoechst: nuclei (DNA)"),
    ("ER", "concanavalin A: endoplasmic reticulum"),
    ("Actin", "phalloidin: actin cytoskeleton"),
    ("RNA", "SYTO14: nucleoli and cytoplasmic RNA"),
    ("Mito", "MitoTracker: mitochondria"),
    ("Golgi", "WGA: Golgi and plasma membrane"),
)

CSS = """
body { font-family: "DejaVu Sans", Arial, Helvetica, sans-serif; margin: 0; color: #1d1d1f; background: #fff;
       font-size: 15px; line-height: 1.45; }
main { max-width: 1300px; margin: 0 auto; padding: 0 24px 48px; }
header { background: #23395d; color: #fff; padding: 18px 24px; }
header h1 { margin: 0 0 4px; font-size: 26px; }
header p { margin: 0; color: #d8e1f0; }
.banner { font-weight: bold; font-size: 18px; padding: 10px 24px; text-align: center; }
.banner.synthetic { background: #b22222; color: #fff; }
.banner.standin { background: #f2c14e; color: #3d2b00; }
nav { background: #f3f5f8; padding: 10px 24px; border-bottom: 1px solid #d6dbe3; font-size: 14px; }
nav a { margin-right: 14px; color: #23395d; }
section { margin-top: 28px; padding-top: 4px; border-top: 2px solid #e3e7ee; }
h2 { font-size: 21px; margin: 12px 0 6px; color: #23395d; }
h3 { font-size: 17px; margin: 18px 0 6px; }
p.what { margin: 4px 0; }
p.good { margin: 4px 0 10px; padding: 6px 10px; background: #eef7ee; border-left: 4px solid #3c8d40; }
p.note { margin: 6px 0; padding: 6px 10px; background: #fff6e5; border-left: 4px solid #e0a100; }
p.missing { margin: 6px 0; padding: 6px 10px; background: #f2f2f2; border-left: 4px solid #999; color: #444; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13.5px; }
th, td { border: 1px solid #cfd5de; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #e9edf3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.bad td { background: #fde8e6; }
table.files td:nth-child(2) { width: 38%; }
tr.good td { background: #eaf6ea; }
.facts td:first-child { font-weight: bold; background: #f6f7f9; }
img.figure { max-width: 100%; height: auto; display: block; margin: 6px 0; border: 1px solid #e3e7ee; }
.gallery { display: flex; flex-wrap: wrap; gap: 14px; margin: 8px 0 18px; }
.group { border: 1px solid #d6dbe3; padding: 6px; border-radius: 4px; }
.group h4 { margin: 0 0 4px; font-size: 13px; }
.group.real h4 { color: #23395d; } .group.accepted h4 { color: #2e7d32; } .group.abstained h4 { color: #b45309; }
.thumbs { display: flex; gap: 4px; }
figure.thumb { margin: 0; text-align: center; font-size: 10.5px; color: #444; width: 88px; }
figure.thumb img { width: 88px; height: 88px; image-rendering: pixelated; display: block; background: #000; }
.legend span.swatch { display: inline-block; width: 14px; height: 14px; vertical-align: middle; margin: 0 4px 0 10px;
                      border: 1px solid #555; }
.small { font-size: 13px; color: #444; }
code { background: #f1f3f6; padding: 0 3px; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img(png: bytes, alt: str, css_class: str = "figure") -> str:
    return f'<img class="{css_class}" alt="{esc(alt)}" src="{png_uri(png)}">'


def fmt(value, digits: int = 3) -> str:
    """A number for a person: a few significant digits, integers as integers, missing as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return "–"
        if float(value).is_integer() and abs(value) < 1e6:
            return str(int(value))
        return f"{value:.{digits}g}"
    if isinstance(value, str):
        return value
    if pd.isna(value):
        return "–"
    return str(value)


def percent(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or pd.isna(value):
        return "–"
    return f"{100 * float(value):.0f}%"


def table(frame: pd.DataFrame, *, row_class=None, numeric: bool = True, raw_columns=(), limit: int | None = None,
          more: str = "") -> str:
    """An HTML table from a DataFrame; `row_class(row) -> str` colours rows; `raw_columns` hold ready HTML."""
    if frame is None or frame.empty:
        return '<p class="missing">Nothing to show.</p>'
    shown = frame if limit is None else frame.head(limit)
    head = "".join(f"<th>{esc(c)}</th>" for c in shown.columns)
    rows = []
    for _, row in shown.iterrows():
        cells = []
        for column in shown.columns:
            value = row[column]
            if column in raw_columns:
                cells.append(f"<td>{value}</td>")
            elif numeric and isinstance(value, (int, float, np.integer, np.floating)) \
                    and not isinstance(value, (bool, np.bool_)):
                cells.append(f'<td class="num">{esc(fmt(value))}</td>')
            else:
                cells.append(f"<td>{esc(fmt(value))}</td>")
        css = row_class(row) if row_class else ""
        rows.append(f'<tr class="{css}">' + "".join(cells) + "</tr>" if css else "<tr>" + "".join(cells) + "</tr>")
    extra = ""
    if limit is not None and len(frame) > limit:
        extra = f'<p class="small">… and {len(frame) - limit} more row(s){esc(more)}.</p>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{extra}"


def facts(pairs) -> str:
    """A two-column key/value table; values are escaped text."""
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(fmt(v))}</td></tr>" for k, v in pairs)
    return f'<table class="facts"><tbody>{rows}</tbody></table>'


def section(anchor: str, title: str, what: str, good: str | None, body: str) -> str:
    """A report panel: what it shows and what good looks like, in plain words, then the content."""
    good_html = f'<p class="good"><b>What good looks like:</b> {good}</p>' if good else ""
    return (f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2><p class="what"><b>What this shows:</b> {what}</p>'
            f"{good_html}{body}</section>")


def missing(text: str) -> str:
    return f'<p class="missing">{text}</p>'


def note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def composite_legend() -> str:
    """The colour key of the six-stain composite (morphotrust.images.composite_rgb, rxrx1-utils colour map)."""
    swatches = []
    for (short, label), colour in zip(STAIN_LABELS, COMPOSITE_COLOURS):
        r, g, b = (int(round(255 * c)) for c in colour)
        swatches.append(f'<span class="swatch" style="background: rgb({r},{g},{b})"></span>{esc(short)} '
                        f'<span class="small">({esc(label)})</span>')
    return ('<p class="legend small"><b>Colour key</b> (the six stains as one colour picture, the colour map of '
            "Recursion's rxrx1-utils):" + "".join(swatches) + "<br>Each stain is scaled over a fixed brightness "
            "range (the same for every image, so brightness can be compared between real and generated sites) and "
            "painted in its colour; the colours add up, so where stains overlap they mix (for example red actin "
            "over green ER looks yellow).</p>")


def page(title: str, subtitle: str, banners: list[tuple[str, str]], nav: list[tuple[str, str]],
         body: str) -> str:
    """The whole document. `banners`: (css class, text); `nav`: (anchor, label)."""
    banner_html = "".join(f'<div class="banner {esc(kind)}" role="alert">{esc(text)}</div>' for kind, text in banners)
    nav_html = "".join(f'<a href="#{esc(a)}">{esc(label)}</a>' for a, label in nav)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>{banner_html}"
            f"<nav>{nav_html}</nav><main>{body}</main></body></html>\n")


STALE_MARK = "<!-- morphotrust: out of date -->"


def mark_stale(path, when: str) -> bool:
    """Put an "out of date" banner at the top of the report `path`, from a run started at `when` that rebuilds it:
    if that run fails, the report no longer looks current. False when it was already marked."""
    path = Path(path)
    text = path.read_text(errors="replace")
    if STALE_MARK in text:
        return False
    banner = (f'{STALE_MARK}<div class="banner stale" role="alert" style="background:#b3261e;color:#fff">OUT OF DATE: '
              f"a new run started at {esc(when)} and rebuilds this report. It shows an earlier run: if the new run has "
              "finished and this banner is still here, the run failed before the report (see its log and "
              "results/logs/).</div>")
    body = re.search(r"<body[^>]*>", text)
    at = body.end() if body else 0
    write_text(text[:at] + banner + text[at:], path)
    return True


def mark_rebuilt_reports_stale(outputs, when: str) -> list[str]:
    """Mark every existing HTML report among `outputs` (the outputs of the jobs a starting run will execute) as out
    of date (`html.mark_stale`); the paths marked."""
    return [str(path) for path in outputs
            if str(path).endswith(".html") and Path(path).is_file() and mark_stale(path, when)]

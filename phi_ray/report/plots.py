"""Small matplotlib helpers that return self-contained ``<img>`` tags (PNG as base64)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on cluster heads or CI
import matplotlib.pyplot as plt


def _img(fig) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=96)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def bars(
    labels: Sequence[str], values: Sequence[float], title: str, ylabel: str = "", log: bool = False
) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    drawn = ax.bar(range(len(values)), values, color="#4c72b0")
    ax.bar_label(drawn, labels=[f"{v:,.0f}" if v else "" for v in values], fontsize=7)
    for i, v in enumerate(values):  # an empty step still says so (a log axis has no zero)
        if not v:
            ax.annotate("0", (i, 0.02), xycoords=("data", "axes fraction"), ha="center", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if log and any(v > 0 for v in values):
        ax.set_yscale("log")
    return _img(fig)


def hist(
    values: Sequence[float],
    title: str,
    bins: int | Sequence[float] = 30,
    vline: float | None = None,
    xlabel: str = "",
) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(values, bins=bins, color="#55a868", edgecolor="white")
    if vline is not None:
        ax.axvline(vline, color="#c44e52", linestyle="--", label=f"threshold {vline:.3f}")
        ax.legend()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    return _img(fig)


def lines(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str = "step",
    ylabel: str = "",
    logy: bool = False,
    point: tuple[float, float, str] | None = None,
) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, (x, y) in series.items():
        ax.plot(x, y, label=name)
    if point is not None:  # one marked operating point, e.g. the chosen threshold
        ax.plot([point[0]], [point[1]], "o", color="#c44e52", label=point[2])
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if len(series) + (point is not None) > 1:
        ax.legend()
    return _img(fig)


def matrix(m: Sequence[Sequence[float]], labels: Sequence[str], title: str) -> str:
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(m, cmap="Blues")
    for i, row in enumerate(m):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:g}", ha="center", va="center")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _img(fig)


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:,.4g}"
        if isinstance(v, int):
            return f"{v:,}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

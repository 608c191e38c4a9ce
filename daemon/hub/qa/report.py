"""``write_report``: the quality report as ``report.json`` and two PNG charts.

* ``report.json``: the :class:`QualityReport`, indented JSON.
* ``embedding_map.png``: the kept personas' embeddings projected on their
  first two principal components (numpy SVD of the centred matrix), each
  point coloured by its k-means cluster; the axes give the share of variance
  each component explains, so a reader knows how much the flat map hides.
* ``attributes.png``: age histogram (with the target range shaded), gender,
  the top occupations and regions, and the Big Five as box plots.

Every file is written atomically (``daemon.files.atomic_write``). matplotlib
is imported only here and only when a report is written, through its object
API and the Agg canvas a PNG save uses (no pyplot, no display).

``write_report_apart`` does the same in a child process that exits when the
report is written. A long-running service (``personad hub serve``) uses it:
importing matplotlib and drawing two figures adds about 40 MiB to a process
that it never gives back (measured: 119 MiB before, 145 after the import, 156
to 164 after one to five reports), and the service then looks, and is, bigger
with every job it has finished. The child costs its start-up once a job
(importing numpy and matplotlib: 1.8 s on the development machine, timed by hand).
"""

from __future__ import annotations

import io
import json
import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

from protocol.hub_persona import BIG_FIVE, HubPersona

from ...files import atomic_write
from .validate import Validation

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["REPORT_FILES", "ReportFailed", "pca_2d", "write_report", "write_report_apart"]

#: What write_report writes, in order.
REPORT_FILES: Final = ("report.json", "embedding_map.png", "attributes.png")
_DPI: Final = 100
_TOP: Final = 12
#: Clusters beyond this many get no legend (it would hide the map).
_LEGEND_MAX: Final = 20
_FILE_MODE: Final = 0o644


def pca_2d(vectors: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], tuple[float, float]]:
    """The rows projected on the first two principal components, and the share of variance each explains."""
    data = np.asarray(vectors, dtype=np.float64)
    if len(data) == 0:
        return np.zeros((0, 2)), (0.0, 0.0)
    centred = data - data.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    comps = vt[:2]
    points = centred @ comps.T
    if points.shape[1] < 2:  # one row or one dimension: a flat second axis
        points = np.hstack([points, np.zeros((len(points), 2 - points.shape[1]))])
    var = s * s
    total = float(var.sum()) or 1.0
    shares = [float(v) / total for v in var[:2]] + [0.0, 0.0]
    return points, (shares[0], shares[1])


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _embedding_map(validation: Validation) -> Figure:
    from matplotlib.figure import Figure

    points, (var1, var2) = pca_2d(validation.embeddings)
    fig = Figure(figsize=(9.0, 7.5), dpi=_DPI)
    ax = fig.subplots()
    labels = validation.clusters
    k = int(labels.max()) + 1 if len(labels) else 0
    palette = [
        "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
        "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan",
    ]  # fmt: skip
    markers = "os^Dv"  # ten colours times five shapes: up to 50 clusters told apart
    for c in range(k):
        members = points[labels == c]
        ax.scatter(
            members[:, 0],
            members[:, 1],
            s=16,
            alpha=0.75,
            linewidths=0,
            color=palette[c % len(palette)],
            marker=markers[(c // len(palette)) % len(markers)],
            label=f"{c} ({len(members)})",
        )
    if 0 < k <= _LEGEND_MAX:
        ax.legend(title="cluster (size)", fontsize=7, title_fontsize=8, loc="best", ncols=2 if k > 10 else 1)
    d = validation.report.diversity
    ax.set_title(
        f"{len(points)} personas, {k} clusters (entropy {d.cluster_entropy:.2f}), spread {d.spread:.3f}"
    )
    ax.set_xlabel(f"principal component 1 ({var1:.0%} of variance)")
    ax.set_ylabel(f"principal component 2 ({var2:.0%} of variance)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def _barh(ax: Axes, counts: Counter[str], title: str) -> None:
    top = counts.most_common(_TOP)
    names = [v if len(v) <= 28 else v[:27] + "…" for v, _ in top]
    ax.barh(names, [c for _, c in top], color="tab:blue")
    ax.invert_yaxis()  # the most common on top
    rest = sum(counts.values()) - sum(c for _, c in top)
    suffix = f" (+{rest} in {len(counts) - len(top)} more)" if rest else ""
    ax.set_title(title + suffix, fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    if not counts:
        ax.text(0.5, 0.5, "none known", ha="center", va="center", transform=ax.transAxes)


def _attributes(personas: list[HubPersona], validation: Validation) -> Figure:
    from matplotlib.figure import Figure

    from .culture import normalise_gender

    attrs = [p.attributes for p in personas]
    fig = Figure(figsize=(13.0, 9.0), dpi=_DPI)
    axes = fig.subplots(2, 3)
    ages = [a.age for a in attrs if a.age is not None]
    ax = axes[0][0]
    ax.hist(ages, bins=range(0, 121, 5), color="tab:blue", edgecolor="white")
    if validation.targets is not None:
        ax.axvspan(
            validation.targets.age_min,
            validation.targets.age_max,
            color="tab:green",
            alpha=0.12,
            label="target range",
        )
        ax.legend(fontsize=8)
    ax.set_title(f"age ({len(attrs) - len(ages)} unknown)", fontsize=10)
    ax.set_xlabel("years")
    _barh(axes[0][1], Counter(normalise_gender(a.gender) if a.gender else "unknown" for a in attrs), "gender")
    _barh(axes[0][2], Counter(a.occupation.lower() for a in attrs if a.occupation), "top occupations")
    _barh(axes[1][0], Counter(a.region for a in attrs if a.region), "top regions")
    traits = [a.traits for a in attrs if a.traits is not None]
    ax = axes[1][1]
    if traits:
        ax.boxplot(
            [[getattr(t, name) for t in traits] for name in BIG_FIVE], tick_labels=[n[:5] for n in BIG_FIVE]
        )
        ax.set_ylim(0, 100)
    else:
        ax.text(0.5, 0.5, "no traits", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"Big Five ({len(traits)} with traits)", fontsize=10)
    ax = axes[1][2]
    hist = validation.report.authenticity.histogram
    ax.bar([i / 10 + 0.05 for i in range(len(hist))], hist, width=0.09, color="tab:orange")
    ax.set_xlim(0, 1)
    ax.set_title(f"authenticity (mean {validation.report.authenticity.mean:.2f})", fontsize=10)
    ax.set_xlabel("score")
    fig.suptitle(f"{len(personas)} kept personas of {validation.report.input}")
    fig.tight_layout()
    return fig


def write_report(validation: Validation, out_dir: Path) -> list[Path]:
    """Write report.json and the two PNGs into ``out_dir`` (created if need be); return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in REPORT_FILES]
    data = json.dumps(validation.report.model_dump(mode="json"), indent=2, ensure_ascii=False)
    atomic_write(paths[0], (data + "\n").encode(), mode=_FILE_MODE)
    atomic_write(paths[1], _png(_embedding_map(validation)), mode=_FILE_MODE)
    atomic_write(paths[2], _png(_attributes(validation.kept, validation)), mode=_FILE_MODE)
    return paths


class ReportFailed(RuntimeError):
    """The child process drawing a report died before it was written (killed, out of memory)."""


def write_report_apart(validation: Validation, out_dir: Path) -> list[Path]:
    """:func:`write_report` in a fresh child process (spawned, not forked: the caller runs threads
    and an event loop), so that matplotlib and its figures never live in the caller's memory.

    Blocking: a service calls it through ``asyncio.to_thread``. An error the child raises is
    raised here; a child that dies raises :class:`ReportFailed`.
    """
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(write_report, validation, out_dir).result()
        except BrokenProcessPool as exc:
            raise ReportFailed(f"the process drawing the report died before it was written: {exc}") from exc

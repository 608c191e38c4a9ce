"""The soak's report: figures as JSON, and charts for people who would rather look.

``summarise`` turns the run into one JSON-able dict (requests, rate, latency
percentiles per method, errors by code, faults, ledger, RSS and its trend);
``charts`` draws latency and throughput over time with the faults marked, RSS
over time per process, and errors by code, as PNGs.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

#: RSS growth after warm-up that counts as unbounded: at least this many MiB and this share of the level.
GROWTH_MIB = 32.0
GROWTH_SHARE = 0.25
#: Seconds after a process (re)starts during which its RSS is still warming up.
SETTLE_S = 30.0


def percentiles(values: Any) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return {"n": 0}
    return {
        "n": int(a.size),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "max_ms": round(float(a.max()), 2),
    }


def rss_trends(
    samples: list[tuple[float, dict[str, tuple[float, tuple[int, ...]]]]],
    warmup_s: float,
    level_changes: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """Per role: level and growth of RSS after warm-up, per run of the same pids (a restart starts a new run).

    ``level_changes`` names moments after which a role carries a different load, so that a
    new run starts there too: a bus node's clients move to the other node when theirs is
    killed (and stay), so its memory steps up with their connections without growing.
    Growth is the least-squares slope over the run times its length; a run is judged only when it
    lasts long enough to say (at least 20 samples after settling).
    """
    series: dict[str, list[tuple[float, float, tuple[int, ...]]]] = {}
    for t, roles in samples:
        for role, (mib, pids) in roles.items():
            series.setdefault(role, []).append((t, mib, pids))
    out: dict[str, Any] = {}
    for role, points in series.items():
        changes = sorted((level_changes or {}).get(role, []))
        runs: list[list[tuple[float, float]]] = []
        current: tuple[int, ...] | None = None
        started = 0.0
        for t, mib, pids in points:
            changed = False
            while changes and changes[0] <= t:
                changes.pop(0)
                changed = True
            if pids != current or changed:
                current, started = pids, t
                runs.append([])
            if t >= warmup_s and t - started >= SETTLE_S:
                runs[-1].append((t, mib))
        judged = []
        for run in runs:
            if len(run) < 20:
                continue
            ts = np.array([p[0] for p in run])
            ms = np.array([p[1] for p in run])
            slope = float(np.polyfit(ts, ms, 1)[0])
            growth = slope * float(ts[-1] - ts[0])
            level = float(statistics.median(ms))
            judged.append(
                {
                    "from_s": round(float(ts[0]), 1),
                    "to_s": round(float(ts[-1]), 1),
                    "median_mib": round(level, 1),
                    "growth_mib": round(growth, 1),
                    "unbounded": bool(growth > max(GROWTH_MIB, GROWTH_SHARE * level)),
                }
            )
        out[role] = {
            "max_mib": round(max(p[1] for p in points), 1),
            "last_mib": round(points[-1][1], 1),
            "runs": judged,
            "unbounded": any(r["unbounded"] for r in judged),
        }
    return out


def charts(report: dict[str, Any], stats: Any, rss: list[Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    faults = report["faults"]
    duration = max(report["load"]["seconds"], 1.0)

    def mark(ax: Any) -> None:
        for i, f in enumerate(faults):
            ax.axvline(f["at"], color="tab:red", alpha=0.5, lw=1)
            ax.text(
                f["at"],
                1.0 - 0.06 * (i % 6),
                f" {f['kind']}",
                transform=ax.get_xaxis_transform(),
                fontsize=6,
                color="tab:red",
                va="top",
            )

    # Latency (p50/p99 per 5 s) for the busiest methods, and throughput.
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(12, 8), sharex=True, height_ratios=[3, 1])
    bucket = 5.0
    edges = np.arange(0, duration + bucket, bucket)
    busiest = sorted(stats.latencies, key=lambda m: -len(stats.latencies[m]))[:6]
    for method in busiest:
        t = np.asarray(stats.times[method])
        lat = np.asarray(stats.latencies[method])
        idx = np.digitize(t, edges)
        xs, p99s, p50s = [], [], []
        for b in np.unique(idx):
            sel = lat[idx == b]
            xs.append(edges[b - 1] + bucket / 2)
            p99s.append(np.percentile(sel, 99))
            p50s.append(np.percentile(sel, 50))
        (line,) = ax.plot(xs, p99s, lw=1.2, label=f"{method} p99")
        ax.plot(xs, p50s, lw=0.8, ls=":", color=line.get_color())
    ax.set_yscale("log")
    ax.set_ylabel("latency, ms (solid p99, dotted p50, per 5 s)")
    ax.legend(fontsize=7, loc="upper right", ncols=2)
    ax.grid(alpha=0.3)
    mark(ax)
    all_t = np.concatenate([np.asarray(v) for v in stats.times.values()]) if stats.times else np.array([])
    counts, _ = np.histogram(all_t, bins=np.arange(0, duration + 1, 1.0))
    ax2.plot(np.arange(len(counts)) + 0.5, counts, lw=0.8, color="tab:gray")
    ax2.set_ylabel("requests/s")
    ax2.set_xlabel("seconds since the load started")
    ax2.grid(alpha=0.3)
    mark(ax2)
    fig.suptitle("soak: latency and throughput, faults in red")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
    written.append("latency.png")

    # RSS per process over time.
    fig, ax = plt.subplots(figsize=(12, 5))
    roles = sorted({r for _, sample in rss for r in sample})
    for role in roles:
        # A gap where the role had no process (between a kill and its restart), not a line across it.
        ax.plot([t for t, _ in rss], [s[role][0] if role in s else np.nan for _, s in rss], lw=1, label=role)
    ax.set_ylabel("RSS, MiB")
    ax.set_xlabel("seconds since the load started")
    ax.legend(fontsize=7, loc="upper left", ncols=3)
    ax.grid(alpha=0.3)
    mark(ax)
    fig.suptitle("soak: resident memory of every process (restarts start a new curve level)")
    fig.tight_layout()
    fig.savefig(out / "rss.png", dpi=110)
    plt.close(fig)
    written.append("rss.png")

    # Errors by code (and by method within each code).
    fig, ax = plt.subplots(figsize=(10, 5))
    by_code: dict[str, dict[str, int]] = {}
    for key, n in report["errors"].items():
        method, code = key.split(" -> ")
        by_code.setdefault(code, {})[method] = n
    codes = sorted(by_code, key=lambda c: -sum(by_code[c].values()))
    methods = sorted({m for c in by_code.values() for m in c})
    left = np.zeros(len(codes))
    for method in methods:
        vals = np.array([by_code[c].get(method, 0) for c in codes], dtype=float)
        if vals.any():
            ax.barh(codes, vals, left=left, label=method)
            left += vals
    ax.set_xlabel("answers")
    ax.set_title(f"soak: errors by code ({int(left.sum())} of {report['load']['requests']} requests)")
    if codes:
        ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(out / "errors.png", dpi=110)
    plt.close(fig)
    written.append("errors.png")
    return written

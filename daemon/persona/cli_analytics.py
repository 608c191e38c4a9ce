"""``personad analytics ID [--window N] [--plot FILE.png] [--json]``: a persona's analytics.

Listed in daemon/cli.py's ROLE_CLI_MODULES (see the contract there). The
verb is ``persona.analytics`` on ``persona:ID`` with a readable summary;
``--json`` prints the result as it came, ``--plot`` also draws the trend
(mean score per bucket), the success rate per bucket and the top topics'
scores into a PNG. The figure is built with matplotlib's object API and the
Agg renderer savefig picks for a PNG (no pyplot, no display, no global state), imported only when a
plot is asked for.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ..cli_common import call_once
from ..state import StateDir

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PLOT_DPI", "PLOT_SIZE_IN", "add_verbs", "build_figure", "write_plot"]

#: The PNG is PLOT_SIZE_IN x PLOT_DPI pixels: 1200 x 900.
PLOT_SIZE_IN: Final = (12.0, 9.0)
PLOT_DPI: Final = 100


def add_verbs(verb: Callable[[str, str], argparse.ArgumentParser]) -> dict[str, Any]:
    parser = verb("analytics", "a persona's performance analytics (persona.analytics), optionally plotted")
    parser.add_argument("id", help="persona id")
    parser.add_argument("--window", type=int, default=30, help="days analysed, up to now (default 30)")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="also draw trend, success, topics")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--token", default=None, help="token (default: env PERSONAD_TOKEN, then the admin token)"
    )
    return {"analytics": analytics_verb}


def analytics_verb(args: argparse.Namespace, state: StateDir, url: str) -> int:
    """Fetch, print, and plot if asked; 1 when the call fails (the error is printed)."""
    if args.plot is not None and not args.plot.lower().endswith(".png"):
        print("personad: --plot wants a FILE.png", file=sys.stderr)
        return 2
    result = call_once(
        state.root, url, args.token, "persona.analytics", {"window": args.window}, to=f"persona:{args.id}"
    )
    if result is None:
        return 1
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else summary(result))
    if args.plot is not None:
        write_plot(result, Path(args.plot))
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0


def _num(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def _percent(x: float | None, fmt: str) -> str:
    """``x`` (a fraction) as a percentage, or ``n/a`` when there is too little data for it."""
    return "n/a" if x is None else f"{format(x * 100, fmt)} %"


def summary(r: dict[str, Any]) -> str:
    """A few readable lines: who, tier, the headline figures, then each recommendation."""
    g = r["growth_stats"]
    rate = g["growth_rate"]
    lines = [
        f"{r['persona_name']} ({r['persona_id']}), {r['role'] or 'role unknown'}: tier {r['tier']}",
        f"last {r['window_days']} days: {r['total_sessions']} sessions, {r['total_records']} records, "
        f"average score {_num(r['average_score'])}, success {_percent(r['success_rate'], '.0f')}, "
        f"growth {_percent(rate, '+.0f')}",
        f"streak {g['usage_streak']} days, {g['unique_tasks']} tasks ({g['repeat_tasks']} repeated), "
        f"{g['total_usage_time_h']:.1f} h",
        "topics: " + (", ".join(f"{t['topic']} {t['score']:.0f}" for t in r["top_topics"]) or "-"),
    ]
    lines += [f"! {rec['message']} [{rec['figure']}]" for rec in r["recommendations"]]
    lines += [f"+ {opp['message']} [{opp['figure']}]" for opp in r["growth_opportunities"]]
    return "\n".join(lines)


def build_figure(r: dict[str, Any]) -> Figure:
    """The three panels from an analytics result; the plotted series are the result's own numbers.

    Empty trend buckets are NaN, so the lines break there instead of
    pretending a score of zero.
    """
    from matplotlib.figure import Figure

    nan = float("nan")
    trend = r["performance_trend"]
    days = [datetime.fromtimestamp(p["start"], UTC) for p in trend]
    scores = [nan if p["average_score"] is None else p["average_score"] for p in trend]
    success = [nan if p["success_rate"] is None else p["success_rate"] * 100 for p in trend]
    fig = Figure(figsize=PLOT_SIZE_IN, dpi=PLOT_DPI)
    ax_score, ax_success, ax_topics = fig.subplots(3, 1)
    fig.suptitle(f"{r['persona_name']} ({r['persona_id']}): last {r['window_days']} days, tier {r['tier']}")
    ax_score.plot(days, scores, marker="o", label="mean score")
    ax_score.set_ylim(0, 100)
    ax_score.set_ylabel("score")
    ax_score.set_title("performance trend")
    ax_success.plot(days, success, marker="o", color="tab:green", label="success rate")
    ax_success.set_ylim(0, 100)
    ax_success.set_ylabel("success %")
    ax_success.set_title("success rate")
    topics = r["top_topics"]
    ax_topics.barh([t["topic"] for t in topics], [t["score"] for t in topics], color="tab:orange")
    ax_topics.set_xlim(0, 100)
    ax_topics.invert_yaxis()  # the first topic on top
    ax_topics.set_xlabel("mean score")
    ax_topics.set_title("top topics")
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def write_plot(r: dict[str, Any], path: Path) -> None:
    """Render :func:`build_figure` to ``path`` as a PNG of PLOT_SIZE_IN x PLOT_DPI pixels."""
    build_figure(r).savefig(str(path), format="png", dpi=PLOT_DPI)

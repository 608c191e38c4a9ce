"""validate() end to end with the real embedder and model judge; the report it writes, here and apart."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from daemon.hub.qa import judge_with, validate, write_report
from daemon.hub.qa.report import REPORT_FILES, ReportFailed, pca_2d, write_report_apart
from daemon.inference.embed import Embedder
from daemon.inference.engine import AsyncEngine
from protocol.commands.hub_quality import QualityReport, QualityThresholds
from protocol.hub_persona import Attributes, AttributeTargets, BigFive, HubPersona, Weighted
from tests.daemon.hub.conftest import generate_with

from .test_dedup import DISTINCT

TRAITS = BigFive(openness=60, conscientiousness=40, extraversion=15, agreeableness=70, neuroticism=50)


def personas() -> list[HubPersona]:
    facts = [
        (61, "female", "nurse", "Lyon"),
        (70, "male", "engineer", "Glasgow"),
        (29, "female", "developer", "Bangalore"),
        (45, "male", "teacher", "Ohio"),
        (24, "female", "farmer", "Kenya"),
        (52, "male", "lawyer", "Rotterdam"),
    ]
    out = [
        HubPersona(
            id=f"run-{i}",
            persona=text,
            path="structured",
            attributes=Attributes(age=a, gender=g, occupation=o, region=r, traits=TRAITS),
        )
        for i, (text, (a, g, o, r)) in enumerate(zip(DISTINCT, facts, strict=True))
    ]
    out.append(out[0].model_copy(update={"id": "run-6", "persona": DISTINCT[0].upper()}))
    out.append(
        HubPersona(
            id="run-7",
            persona="A person who likes various things. An outgoing nurse, he is 30 years old.",
            path="structured",
            attributes=Attributes(age=61, gender="female", occupation="nurse", region="Lyon", traits=TRAITS),
        )
    )
    return out


TARGETS = AttributeTargets(
    age_min=20,
    age_max=79,
    occupation=[Weighted(value=o, weight=1) for o in ("nurse", "engineer", "teacher", "pilot")],
    region=[Weighted(value="Lyon", weight=1), Weighted(value="Oslo", weight=1)],
)


async def test_validate_dedups_scores_and_reports(
    hub_embedder: Embedder, hub_engine: AsyncEngine, tmp_path: Path
) -> None:
    seen: list[tuple[str, int, int]] = []
    validation = await validate(
        personas(),
        embed=hub_embedder.embed,
        targets=TARGETS,
        judge=judge_with(generate_with(hub_engine)),
        judge_sample=2,
        thresholds=QualityThresholds(min_count=3),
        progress=lambda stage, done, total: seen.append((stage, done, total)),
    )
    report = validation.report
    assert (8, 7) == (report.input, report.kept)
    assert [("run-6", "minhash", "run-0")] == [
        (r.id, r.stage, r.duplicate_of) for r in report.duplicates_removed.removed
    ]
    assert {"minhash": 1, "embedding": 0} == report.duplicates_removed.removed_by_stage
    assert [p.id for p in validation.kept] == [f"run-{i}" for i in (0, 1, 2, 3, 4, 5, 7)]
    assert (7, 384) == validation.embeddings.shape
    assert 7 == len(validation.clusters)
    # run-7 contradicts its age, gender and extraversion: those rules fire with reasons.
    mine = {f.check for f in report.coherence.failures if f.id == "run-7"}
    assert {"age", "gender", "trait"} <= mine
    assert report.coherence.score < 1.0
    assert 2 == report.coherence.judged + report.coherence.judge_errors
    assert "run-7" == report.authenticity.worst[0].id
    assert 7 == sum(report.authenticity.histogram)
    assert ["pilot"] == report.diversity.coverage["occupation"].missing
    assert {"gender", "occupation", "region", "age"} == {b.attribute for b in report.cultural.balance}
    assert {"minhash", "embed", "embedding", "coherence", "authenticity", "diversity", "cultural"} == set(
        report.timings
    )
    stages = [s for s, _, _ in seen]
    for stage in ("minhash", "embed", "embedding", "judge", "coherence", "diversity", "cultural"):
        assert stage in stages
    assert ("judge", 2, 2) in seen

    paths = write_report(validation, tmp_path / "out")
    assert [tmp_path / "out" / name for name in REPORT_FILES] == paths
    again = QualityReport.model_validate(json.loads(paths[0].read_text()))
    assert report == again
    for png in paths[1:]:
        image = imread(str(png))
        assert image.shape[0] > 300
        assert image.shape[1] > 300

    # Drawn in a child process, as the hub service does: the same files, and the caller's
    # process never imports matplotlib (run in a fresh interpreter, since this one has).
    pickled = tmp_path / "validation.pickle"
    pickled.write_bytes(pickle.dumps(validation))
    script = (
        "import pickle, sys; from pathlib import Path\n"
        "from daemon.hub.qa.report import write_report_apart\n"
        "v = pickle.loads(Path(sys.argv[1]).read_bytes())\n"
        "print(len(write_report_apart(v, Path(sys.argv[2]))), 'matplotlib' in sys.modules)\n"
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script, str(pickled), str(tmp_path / "apart")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "3 False" == done.stdout.strip(), done.stderr
    assert paths[0].read_text() == (tmp_path / "apart" / REPORT_FILES[0]).read_text()
    for name in REPORT_FILES[1:]:
        assert imread(str(tmp_path / "apart" / name)).shape == imread(str(tmp_path / "out" / name)).shape


class _DiesWhenUnpickled:
    """Stands for a child that dies drawing (killed, out of memory): unpickling it ends the process."""

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return (os._exit, (9,))


def test_a_report_child_that_dies_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ReportFailed, match="died before it was written"):
        write_report_apart(_DiesWhenUnpickled(), tmp_path)  # type: ignore[arg-type]
    assert not (tmp_path / REPORT_FILES[0]).exists()


async def test_validate_of_nothing_is_an_empty_report(hub_embedder: Embedder, tmp_path: Path) -> None:
    validation = await validate([], embed=hub_embedder.embed)
    assert (0, 0) == (validation.report.input, validation.report.kept)
    assert 1.0 == validation.report.coherence.score
    assert 3 == len(write_report(validation, tmp_path))


@pytest.mark.parametrize("rows", [1, 5])
def test_pca_projection_shape_and_variance_shares(rows: int) -> None:
    data = np.random.default_rng(0).standard_normal((rows, 6))
    points, (a, b) = pca_2d(data)
    assert (rows, 2) == points.shape
    assert 0.0 <= b <= a <= 1.0

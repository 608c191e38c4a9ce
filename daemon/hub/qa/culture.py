"""Cultural sensitivity: is the population balanced as declared, and free of occupational stereotypes?

**Balance**, per attribute with a target (gender always; occupation and
region when listed; age as decades, the target spreading ages evenly over
``age_min..age_max``): each value's observed share among personas with a
known value against its target share (weights normalised), the total
variation distance ``0.5 * sum |observed - target|`` over all values, and a
flag on a value whose share is off its target by more than the margin (0.1)
once at least ``min_count`` personas have a known value.

**Stereotypes**: for each occupation with at least ``min_count`` personas of
known gender, an exact two-sided binomial test (``scipy.stats.binomtest``)
of each gender's count against its expected share: the occupation's own
shares in ``targets.occupation_gender``, else the overall target, else (no
targets at all) the overall observed split. The same for region, against the
region target or else the observed overall split. An occupation is flagged
when its most extreme test has a p-value under ``alpha / tests`` (Bonferroni
over every test run) and its share is off by more than the margin as well, so
a trivial lean in a huge sample is not called a stereotype. The flag carries
the evidence: counts, n, expected count, shares and p-value.

A missing attribute is counted as unknown, never guessed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Final, Literal

from scipy.stats import binomtest  # type: ignore[import-untyped]

from protocol.commands.hub_quality import AttributeBalance, CulturalReport, ShareRow, StereotypeFlag
from protocol.hub_persona import AttributeTargets, HubPersona, Weighted

__all__ = ["balance", "cultural", "normalise_gender", "stereotypes"]

_GENDER_SPELLINGS: Final = {
    "f": "female",
    "woman": "female",
    "women": "female",
    "girl": "female",
    "m": "male",
    "man": "male",
    "men": "male",
    "boy": "male",
    "nonbinary": "non-binary",
    "non binary": "non-binary",
    "enby": "non-binary",
}


def normalise_gender(value: str | None) -> str:
    """One spelling per gender (woman -> female); other values lower-cased as given."""
    v = " ".join((value or "").lower().split())
    return _GENDER_SPELLINGS.get(v, v)


def _key(value: str) -> str:
    return " ".join(value.lower().split())


def _shares(weighted: Sequence[Weighted], *, gender: bool = False) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for w in weighted:
        totals[normalise_gender(w.value) if gender else _key(w.value)] += w.weight
    whole = sum(totals.values())
    return {v: s / whole for v, s in totals.items()} if whole > 0 else {}


def _age_shares(targets: AttributeTargets) -> dict[str, float]:
    years = targets.age_max - targets.age_min + 1
    counts = Counter(f"{age // 10 * 10}s" for age in range(targets.age_min, targets.age_max + 1))
    return {d: c / years for d, c in counts.items()}


def _observed(personas: Sequence[HubPersona], attribute: str) -> list[str | None]:
    out: list[str | None] = []
    for p in personas:
        a = p.attributes
        if attribute == "gender":
            out.append(normalise_gender(a.gender) if a.gender else None)
        elif attribute == "age":
            out.append(f"{a.age // 10 * 10}s" if a.age is not None else None)
        else:
            value = getattr(a, attribute)
            out.append(_key(value) if value else None)
    return out


def _balance_one(
    attribute: Literal["gender", "occupation", "region", "age"],
    values: list[str | None],
    target: dict[str, float],
    *,
    margin: float,
    min_count: int,
) -> AttributeBalance:
    known = [v for v in values if v is not None]
    counts = Counter(known)
    n = len(known)
    order = sorted(target, key=lambda v: (-target[v], v)) + sorted(v for v in counts if v not in target)
    rows = []
    for value in order:
        share = counts[value] / n if n else 0.0
        wanted = target.get(value, 0.0)
        rows.append(
            ShareRow(
                value=value,
                count=counts[value],
                share=round(share, 4),
                target=round(wanted, 4),
                flagged=n >= min_count and abs(share - wanted) > margin,
            )
        )
    tvd = 0.5 * sum(abs((counts[v] / n if n else 0.0) - target.get(v, 0.0)) for v in order) if n else 0.0
    return AttributeBalance(
        attribute=attribute, known=n, unknown=len(values) - n, tvd=round(min(1.0, tvd), 4), rows=rows
    )


def balance(
    personas: Sequence[HubPersona], targets: AttributeTargets, *, margin: float = 0.1, min_count: int = 20
) -> list[AttributeBalance]:
    """Observed against target shares, per attribute with a declared target."""
    out = [
        _balance_one(
            "gender",
            _observed(personas, "gender"),
            _shares(targets.gender, gender=True),
            margin=margin,
            min_count=min_count,
        )
    ]
    for attribute in ("occupation", "region"):
        weighted: list[Weighted] = getattr(targets, attribute)
        if weighted:
            out.append(
                _balance_one(
                    attribute,
                    _observed(personas, attribute),
                    _shares(weighted),
                    margin=margin,
                    min_count=min_count,
                )
            )
    out.append(
        _balance_one(
            "age", _observed(personas, "age"), _age_shares(targets), margin=margin, min_count=min_count
        )
    )
    return out


def _overall(values: list[str | None]) -> dict[str, float]:
    counts = Counter(v for v in values if v is not None)
    n = sum(counts.values())
    return {v: c / n for v, c in counts.items()} if n else {}


def stereotypes(
    personas: Sequence[HubPersona],
    targets: AttributeTargets | None,
    *,
    alpha: float = 0.01,
    margin: float = 0.1,
    min_count: int = 20,
) -> tuple[list[StereotypeFlag], int]:
    """Occupations whose gender or region split deviates significantly, and the number of tests run."""
    occupations = _observed(personas, "occupation")
    candidates: list[tuple[float, StereotypeFlag]] = []
    tests = 0
    for attribute in ("gender", "region"):
        values = _observed(personas, attribute)
        if attribute == "gender":
            overall = _shares(targets.gender, gender=True) if targets is not None else _overall(values)
            own = {
                _key(o): _shares(w, gender=True)
                for o, w in (targets.occupation_gender if targets else {}).items()
            }
        else:
            overall = _shares(targets.region) if targets is not None and targets.region else _overall(values)
            own = {}
        groups: dict[str, list[str]] = defaultdict(list)
        for occ, value in zip(occupations, values, strict=True):
            if occ is not None and value is not None:
                groups[occ].append(value)
        for occ in sorted(groups):
            seen = groups[occ]
            n = len(seen)
            if n < min_count:
                continue
            expected = own.get(occ, overall)
            counts = Counter(seen)
            worst: tuple[float, float, StereotypeFlag] | None = None
            for value in sorted(expected):
                p = expected[value]
                if not 0.0 < p < 1.0:
                    continue
                k = counts[value]
                tests += 1
                p_value = float(binomtest(k, n, p).pvalue)
                flag = StereotypeFlag(
                    occupation=occ,
                    attribute=attribute,
                    value=value,
                    count=k,
                    n=n,
                    expected=round(n * p, 2),
                    observed_share=round(k / n, 4),
                    expected_share=round(p, 4),
                    p_value=p_value,
                )
                rank = (p_value, -abs(k / n - p))
                if abs(k / n - p) > margin and (worst is None or rank < (worst[0], worst[1])):
                    worst = (rank[0], rank[1], flag)
            if worst is not None:
                candidates.append((worst[0], worst[2]))
    flags = [flag for p_value, flag in candidates if tests and p_value < alpha / tests]
    return flags, tests


def cultural(
    personas: Sequence[HubPersona],
    targets: AttributeTargets | None,
    *,
    alpha: float = 0.01,
    margin: float = 0.1,
    min_count: int = 20,
) -> CulturalReport:
    """The cultural sensitivity report: balance against the targets and the stereotype flags."""
    rows = balance(personas, targets, margin=margin, min_count=min_count) if targets is not None else []
    flags, tests = stereotypes(personas, targets, alpha=alpha, margin=margin, min_count=min_count)
    return CulturalReport(
        balance=rows,
        balance_flags=sum(r.flagged for b in rows for r in b.rows),
        stereotypes=flags,
        tests=tests,
    )

"""Claims with predictions fixed before the run, and the one rule that turns a measurement into
a verdict ("Verdicts that can fail", DESIGN.md).

An experiment declares each claim as a field of its settings dataclass (so that `ntklab run NAME
--set FIELD='{"prediction": 3}'` changes it, and config.json records it):

    alg1_exponent: Claim = Claim("Algorithm 1: exponent of n* in d", 2.0, 0.5, "Damian et al. 2022")

and after the run calls `claim.check(measured, se)`, which returns a row of the claims table.
The verdict depends only on the prediction p, the tolerance t, the measurement m and its
standard error s (`verdict`):

* "holds"        when |m - p| <= t and 2 s <= t (inside the tolerance, and the evidence
                 resolves the tolerance);
* "fails"        when |m - p| > t + 2 s (outside the tolerance by more than two standard errors);
* "inconclusive" otherwise, and whenever m or s is not a finite number (e.g. one seed gives no
                 standard error), or when the experiment says why the run cannot test the claim.

A deterministic measurement (exact arithmetic, a closed form) has s = 0.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

VERDICTS = ("holds", "fails", "inconclusive")
COLUMNS = ["claim", "source", "prediction", "tolerance", "measured ± s.e.", "verdict", "why"]


def verdict(prediction: float, tolerance: float, measured: float, se: float) -> str:
    """"holds" if |measured - prediction| <= tolerance and 2 se <= tolerance; "fails" if
    |measured - prediction| > tolerance + 2 se (an infinite measurement, a diverged run, fails);
    "inconclusive" otherwise (and for a NaN measurement or a standard error that is not finite)."""
    if se < 0:
        raise ValueError(f"a standard error must be >= 0, got {se}")
    if math.isinf(measured):
        return "fails"
    if not (math.isfinite(measured) and math.isfinite(se)):
        return "inconclusive"
    distance = abs(measured - prediction)
    if distance <= tolerance and 2 * se <= tolerance:
        return "holds"
    if distance > tolerance + 2 * se:
        return "fails"
    return "inconclusive"


def _why(prediction: float, tolerance: float, measured: float, se: float, result: str) -> str:
    """The reason for a verdict, in the terms of the rule."""
    if math.isinf(measured):
        return "the measurement diverged"
    if not math.isfinite(measured):
        return "not measured in this run"
    if not math.isfinite(se):
        return "no standard error in this run (e.g. a single seed)"
    distance = abs(measured - prediction)
    if result == "holds":
        return f"|m - p| = {distance:.3g} <= t, 2 s.e. = {2 * se:.3g} <= t"
    if result == "fails":
        return f"|m - p| = {distance:.3g} > t + 2 s.e. = {tolerance + 2 * se:.3g}"
    if distance <= tolerance:
        return f"inside t, but 2 s.e. = {2 * se:.3g} > t: the run cannot resolve the tolerance"
    return f"|m - p| = {distance:.3g} > t, but within t + 2 s.e. = {tolerance + 2 * se:.3g}"


@dataclass(frozen=True)
class Claim:
    """A claim of an experiment: what is measured (`statement`), the predicted value, the
    tolerance around it and where the prediction comes from, all fixed before the run."""

    statement: str
    prediction: float
    tolerance: float
    source: str

    def __post_init__(self) -> None:
        if not isinstance(self.statement, str) or not isinstance(self.source, str):
            raise ValueError(f"a claim's statement and source are text, got {self.statement!r}, {self.source!r}")
        for name in ("prediction", "tolerance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"claim {self.statement!r}: {name} must be a finite number, got {value!r}")
        if self.tolerance <= 0:
            raise ValueError(f"claim {self.statement!r}: tolerance must be > 0 (a claim needs room for "
                             f"rounding and the run's noise), got {self.tolerance!r}")
        object.__setattr__(self, "prediction", float(self.prediction))
        object.__setattr__(self, "tolerance", float(self.tolerance))

    def replaced(self, changes: Any) -> "Claim":
        """The claim with some of its fields replaced: `changes` is a Claim or a mapping of
        field -> value (e.g. {"prediction": 3}, from `--set FIELD='{"prediction": 3}'`)."""
        if isinstance(changes, Claim):
            return changes
        names = [field.name for field in dataclasses.fields(Claim)]
        if not isinstance(changes, Mapping) or set(changes) - set(names):
            raise ValueError(f"a claim is changed by a mapping with some of the keys {', '.join(names)} "
                             f"(e.g. --set FIELD='{{\"prediction\": 3, \"tolerance\": 0.5}}'), got {changes!r}")
        return dataclasses.replace(self, **changes)

    def check(self, measured: float, se: float, *, label: str = "", untestable: str = "",
              digits: int = 3) -> dict[str, Any]:
        """The claims-table row of this claim for a measurement and its standard error.

        `label` is prepended to the statement (e.g. the task); `untestable`, when given, is the
        reason why this run cannot test the claim: the verdict is then "inconclusive" whatever the
        numbers (they are still shown)."""
        measured, se = float(measured), float(se)
        result = "inconclusive" if untestable else verdict(self.prediction, self.tolerance, measured, se)
        why = untestable or _why(self.prediction, self.tolerance, measured, se, result)
        shown = f"{measured:.{digits}g} ± {se:.2g}" if math.isfinite(se) else f"{measured:.{digits}g} (no s.e.)"
        return {"claim": f"{label}: {self.statement}" if label else self.statement, "source": self.source,
                "prediction": f"{self.prediction:.{digits}g}", "tolerance": f"{self.tolerance:.{digits}g}",
                "measured ± s.e.": shown, "verdict": result, "why": why,
                "numbers": {"prediction": self.prediction, "tolerance": self.tolerance,
                            "measured": measured, "se": se}}


def scale_factor(measured, se, predicted) -> tuple[float, float]:
    """The least-squares factor a in measured ≈ a · predicted, each entry weighted by 1/se², and
    its standard error 1/sqrt(Σ predicted²/se²): a = 1 when the Monte Carlo is the prediction."""
    import numpy as np
    measured, se, predicted = (np.asarray(v, float).ravel() for v in (measured, se, predicted))
    if not np.all(se > 0) or not np.any(predicted):
        return float("nan"), float("nan")
    weights = predicted ** 2 / se ** 2
    return float((measured * predicted / se ** 2).sum() / weights.sum()), float(1 / np.sqrt(weights.sum()))


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std / sqrt(count); nan for one value)."""
    import numpy as np
    values = np.asarray(values, float)
    if len(values) < 2:
        return float(values.mean()) if len(values) else float("nan"), float("nan")
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))


def accuracy_difference(first: float, second: float, count: int) -> tuple[float, float]:
    """first - second in percentage points, two accuracies on `count` test points, with the
    binomial standard error at the observed accuracies, sqrt(Σ p(1-p)/count) (the two taken as
    independent)."""
    return 100 * (first - second), 100 * math.sqrt((first * (1 - first) + second * (1 - second)) / count)


def other_data(prediction_data: str, data: str) -> str:
    """The reason a claim is untestable when the run's data are not those its predictions are
    for ("" when they are)."""
    if data == prediction_data:
        return ""
    return (f"the prediction is for {prediction_data}, this run's data are {data} "
            f"(with a prediction for {data}: --set prediction_data={data})")

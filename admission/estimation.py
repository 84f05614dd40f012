"""DriftSched's admission-time output-length estimator, and token counters.

At admission the original gateway classifies the prompt into a workload
category by keyword counts, then estimates the output length as::

    estimated_output = int(base(category) * bias * safety(tier) * input_factor)
    input_factor     = min(1.5, 1 + input_len / 1000)

and labels the job size from the total budget ``input_len +
estimated_output`` (short <= 128 < medium <= 512 < long). The estimate
orders SJF and labels the job; it never caps the engine's ``max_tokens``.

The bias comes from :mod:`driftsim.admission.calibration` (1.0 when calibration is off).
Token counting is one tiny interface, :class:`TokenCounter`: the original's
two variants differ only in the counter (``len(text.split())`` versus the
model's tokenizer).

For traces that carry no prompt text, :class:`EstimatorErrorModel` draws the
estimator's error directly (a ratio actual / estimate per request), so drift
and calibration can be studied on any trace.

Behaviour notes, from the original code (``adaptive_token_estimator.py``):

* Keywords are counted with ``str.count`` on the lower-cased prompt, i.e. as
  *substrings*, non-overlapping: ``"code"`` also matches ``"decode"``,
  ``"report"`` matches ``"reports"``, and ``"summary"`` does not match
  ``"summaries"``.
* Ties between categories go to the first in the order summary, report,
  technical (Python's ``max`` over an insertion-ordered dict returns the
  first maximum). If every count is zero the category is short_qa.
* Unknown categories get base 64 and unknown tiers safety 1.0 (the
  original's ``dict.get`` defaults).
* The product is evaluated left to right as written, then truncated by
  ``int`` (towards zero). The original reports ``input_factor`` rounded to two
  decimals but computes with the unrounded value; so do we.
* The gateway counts input tokens with the same counter that the estimator
  uses for ``input_factor`` (split in one variant, tokenizer in the other).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from driftsim.traces.tokens import TokenCounter

#: Workload categories, in the original's order.
CATEGORIES: tuple[str, ...] = ("short_qa", "summary", "technical", "report")

#: Category -> keywords counted in the lower-cased prompt. Dict order is the
#: tie-break order (first wins), as in the original.
KEYWORDS: dict[str, tuple[str, ...]] = {
    "summary": ("summarize", "summary"),
    "report": ("detailed", "report", "comprehensive"),
    "technical": ("architecture", "code", "technical"),
}

#: Base output tokens per category (also the generator's max_tokens per job type).
BASE_TOKENS: dict[str, int] = {"short_qa": 64, "summary": 256, "technical": 384, "report": 512}

#: Estimator safety factor per tier: over-estimate premium, under-estimate batch.
SAFETY: dict[str, float] = {"premium": 1.2, "standard": 1.0, "batch": 0.8}

#: Job size classes by total budget (input + estimated output tokens), upper bounds inclusive.
SHORT_MAX_TOKENS = 128
MEDIUM_MAX_TOKENS = 512

DEFAULT_BASE_TOKENS = 64  # the original's fallback for an unknown category
DEFAULT_SAFETY = 1.0  # the original's fallback for an unknown tier


def classify_category(prompt: str) -> str:
    """Workload category of a prompt by keyword counts; short_qa when none match."""
    text = prompt.lower()
    best, best_score = "short_qa", 0
    for category, words in KEYWORDS.items():
        score = sum(text.count(w) for w in words)
        if score > best_score:  # strict: an equal later count never wins
            best, best_score = category, score
    return best


def base_tokens(category: str) -> int:
    """Base output tokens of a category (64 for an unknown one)."""
    return BASE_TOKENS.get(category, DEFAULT_BASE_TOKENS)


def safety_factor(tier: str) -> float:
    """Safety factor of a tier (1.0 for an unknown one)."""
    return SAFETY.get(tier, DEFAULT_SAFETY)


def input_factor(input_len: int) -> float:
    """Longer prompts get longer answers: ``min(1.5, 1 + input_len / 1000)``."""
    return min(1.5, 1.0 + input_len / 1000)


def estimate_output(category: str, tier: str, input_len: int, bias: float = 1.0) -> int:
    """Estimated output tokens, ``int(base * bias * safety * input_factor)``, in the original's order."""
    return int(base_tokens(category) * bias * safety_factor(tier) * input_factor(input_len))


def job_size(total_budget: int) -> str:
    """Size class of a job from its total budget in tokens: short, medium or long."""
    if total_budget <= SHORT_MAX_TOKENS:
        return "short"
    if total_budget <= MEDIUM_MAX_TOKENS:
        return "medium"
    return "long"


@dataclass(frozen=True)
class Estimate:
    """What the gateway attaches to a request at admission."""

    category: str
    input_tokens: int  # counted with the gateway's counter, tokens (or words for the split variant)
    est_output_tokens: int  # estimated output, same units
    bias: float  # calibration bias used (1.0 when calibration is off)
    size: str  # short / medium / long

    @property
    def est_total_tokens(self) -> int:
        """Total budget ``input + estimated output``: what SJF orders by."""
        return self.input_tokens + self.est_output_tokens


def estimate_request(prompt: str, tier: str, *, counter: TokenCounter, bias: float = 1.0) -> Estimate:
    """The original gateway's admission step for one prompt (classify, count, estimate, size)."""
    category = classify_category(prompt)
    n_in = counter.count(prompt)
    est = estimate_output(category, tier, n_in, bias)
    return Estimate(category=category, input_tokens=n_in, est_output_tokens=est, bias=bias, size=job_size(n_in + est))


class LengthModel(Protocol):
    """Common shape of output-length predictors, so they can be swapped and compared.

    Implemented by :class:`driftsim.admission.calibration.DriftCalibrator` (the original's
    EMA-calibrated formula) and :class:`driftsim.admission.length_predictor.OnlineLengthPredictor`.
    """

    def predict(self, *, category: str, tenant: str, input_tokens: int) -> int:
        """Predicted output length, tokens (>= 0)."""
        ...

    def observe(self, *, category: str, tenant: str, input_tokens: int, actual_output: int, now: float = 0.0) -> None:
        """Feedback after a request completed with ``actual_output`` tokens at time ``now`` (s)."""
        ...


# --------------------------------------------------------------------------
# Token counters
# --------------------------------------------------------------------------


#: NOTE: roughly 0.75 English words per BPE token (common rule of thumb).
WORDS_PER_TOKEN = 0.75


def words_from_tokens(n_tokens: int | np.ndarray, *, words_per_token: float = WORDS_PER_TOKEN) -> int | np.ndarray:
    """Approximate ``len(text.split())`` of a generated text known only by its token count.

    The split variant of the original observes *words* of the generated text
    as the "actual" output, which is what makes its calibration drift away
    from 1.0. Traces carry only token counts, so the simulator converts with
    this fixed ratio (rounded, at least 1 for a non-empty output).
    """
    if isinstance(n_tokens, np.ndarray):
        return np.maximum(np.rint(n_tokens * words_per_token), np.minimum(n_tokens, 1)).astype(np.int64)
    return max(int(round(n_tokens * words_per_token)), min(int(n_tokens), 1))


# --------------------------------------------------------------------------
# Estimator error model for traces without text
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RatioDist:
    """Distribution of ``actual / estimate`` for one group.

    ``median`` > 1 means the estimator under-estimates (systematic drift);
    ``sigma`` is the spread (log-space standard deviation for lognormal).
    """

    median: float = 1.0
    sigma: float = 0.5


#: Signature of a custom ratio sampler: (rng, n, median, sigma) -> n positive ratios.
RatioSampler = Callable[[np.random.Generator, int, float, float], np.ndarray]


def _lognormal(rng: np.random.Generator, n: int, median: float, sigma: float) -> np.ndarray:
    return median * np.exp(sigma * rng.standard_normal(n))


def _fixed(rng: np.random.Generator, n: int, median: float, sigma: float) -> np.ndarray:
    return np.full(n, float(median))


RATIO_SAMPLERS: dict[str, RatioSampler] = {"lognormal": _lognormal, "fixed": _fixed}


class EstimatorErrorModel:
    """Synthesises the uncalibrated estimator's output for traces without prompt text.

    For each request a ratio ``r = actual / estimate`` is drawn from the
    distribution of its group (category or tenant, whatever column the
    caller passes), and the naive estimate is ``max(1, round(actual / r))``.
    By default ``r`` is lognormal with the group's median and sigma.

    Drift over time: ``change_points`` is a sequence of ``(start_s, {group:
    RatioDist})``; from ``start_s`` on, those groups use the new
    distribution (later change points override earlier ones).

    The naive estimate plays the role of ``base`` in the calibrator
    (:meth:`driftsim.admission.calibration.DriftCalibrator.observe` takes ``base=``), so the
    EMA learns ``actual / naive estimate`` exactly as the original learns
    ``actual / base(category)``. Deterministic for a seed: one
    ``numpy.random.Generator`` owned by the model, drawn in request order.
    """

    def __init__(
        self,
        *,
        default: RatioDist = RatioDist(),
        per_group: Mapping[str, RatioDist] | None = None,
        change_points: Sequence[tuple[float, Mapping[str, RatioDist]]] = (),
        distribution: str | RatioSampler = "lognormal",
        seed: int = 0,
    ) -> None:
        self.default = default
        self.per_group = dict(per_group or {})
        self.change_points = sorted(((float(t), dict(m)) for t, m in change_points), key=lambda c: c[0])
        if isinstance(distribution, str):
            try:
                self._sample = RATIO_SAMPLERS[distribution]
            except KeyError:
                raise ValueError(f"unknown distribution '{distribution}'; known: {', '.join(RATIO_SAMPLERS)}") from None
        else:
            self._sample = distribution
        self._rng = np.random.default_rng(seed)

    def dist_for(self, group: str, t_s: float = 0.0) -> RatioDist:
        """The ratio distribution of ``group`` at time ``t_s`` (seconds)."""
        dist = self.per_group.get(group, self.default)
        for start, overrides in self.change_points:
            if t_s >= start and group in overrides:
                dist = overrides[group]
        return dist

    def ratios(self, groups: Sequence[str], arrival_s: Sequence[float] | None = None) -> np.ndarray:
        """Draw one ratio ``actual / estimate`` (> 0) per request."""
        groups = list(groups)
        times = np.zeros(len(groups)) if arrival_s is None else np.asarray(arrival_s, dtype=float)
        if len(times) != len(groups):
            raise ValueError("groups and arrival_s differ in length")
        dists = [self.dist_for(g, t) for g, t in zip(groups, times)]
        out = np.empty(len(groups))
        # one draw per distinct distribution, in first-seen order: deterministic and vectorised
        order: dict[RatioDist, list[int]] = {}
        for i, d in enumerate(dists):
            order.setdefault(d, []).append(i)
        for d, idx in order.items():
            out[idx] = self._sample(self._rng, len(idx), d.median, d.sigma)
        if np.any(out <= 0) or not np.all(np.isfinite(out)):
            raise ValueError("ratio sampler returned a non-positive or non-finite ratio")
        return out

    def estimates(
        self, actual_output: Sequence[int] | np.ndarray, groups: Sequence[str], arrival_s: Sequence[float] | None = None
    ) -> np.ndarray:
        """Naive (uncalibrated) estimates, int64, ``max(1, round(actual / ratio))``."""
        actual = np.asarray(actual_output, dtype=float)
        r = self.ratios(groups, arrival_s)
        return np.maximum(1, np.rint(actual / r)).astype(np.int64)


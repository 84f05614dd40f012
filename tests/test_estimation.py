"""The original estimator formula, classification, EMA calibration and error metrics, by hand."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from driftsim.admission.calibration import DriftCalibrator, ErrorTracker, error_reduction, mae_rmse
from driftsim.admission.estimation import (
    BASE_TOKENS,
    SAFETY,
    EstimatorErrorModel,
    RatioDist,
    classify_category,
    estimate_output,
    estimate_request,
    input_factor,
    job_size,
    words_from_tokens,
)
from driftsim.traces.tokens import TokenizerCounter, WhitespaceCounter
from driftsim.admission.length_predictor import OnlineLengthPredictor

# ---------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("prompt", "category"),
    [
        ("What is DNS?", "short_qa"),
        ("SUMMARIZE this Summary", "summary"),
        ("Explain the internal architecture of Kafka.", "technical"),
        ("Write a detailed report", "report"),  # report 2
        ("summary of the report", "summary"),  # tie 1-1: summary before report
        ("a detailed look at the code", "report"),  # tie 1-1: report before technical
        ("summarize the technical design", "summary"),  # tie 1-1: summary before technical
        ("summarize the code architecture", "technical"),  # 2 beats 1
        ("how to decode JSON", "technical"),  # substring count, as str.count does
        ("summaries and reporting", "report"),  # "summaries" has no "summary"; "reporting" has "report"
        ("", "short_qa"),
    ],
)
def test_classify_category_counts_keywords_like_the_original(prompt, category):
    assert classify_category(prompt) == category


# ---------------------------------------------------------------- the formula


def test_constants_are_the_originals():
    assert BASE_TOKENS == {"short_qa": 64, "summary": 256, "technical": 384, "report": 512}
    assert SAFETY == {"premium": 1.2, "standard": 1.0, "batch": 0.8}


def test_input_factor():
    assert input_factor(0) == 1.0
    assert input_factor(20) == 1.02
    assert input_factor(499) == 1.499
    assert input_factor(500) == 1.5
    assert input_factor(5000) == 1.5


@pytest.mark.parametrize(
    ("category", "tier", "input_len", "bias", "expected"),
    [
        ("report", "premium", 20, 1.0, 626),  # 512 * 1.2 * 1.02 = 626.688 -> 626
        ("short_qa", "premium", 0, 1.0, 76),  # 64 * 1.2 = 76.8 -> 76: truncation, not rounding
        ("short_qa", "batch", 0, 1.0, 51),  # 64 * 0.8 = 51.2
        ("summary", "standard", 600, 1.0, 384),  # factor capped at 1.5
        ("technical", "premium", 100, 0.9, 456),  # 384 * 0.9 * 1.2 * 1.1 = 456.192
        ("unknown", "gold", 0, 1.0, 64),  # the original's fallbacks: base 64, safety 1.0
        # order of operations: ((384 * 0.95) * 1.0) * 1.25 = 455.99999999999994 -> 455 (exactly 456 in real arithmetic)
        ("technical", "standard", 250, 0.95, 455),
    ],
)
def test_estimate_output_by_hand(category, tier, input_len, bias, expected):
    assert estimate_output(category, tier, input_len, bias) == expected


def test_job_size_boundaries():
    assert [job_size(n) for n in (0, 128, 129, 512, 513)] == ["short", "short", "medium", "medium", "long"]


def test_estimate_request_is_the_gateway_step():
    prompt = "Request ID 7. Tenant tenant-premium. Job type report. Write a report comparing different approaches to DNS."
    est = estimate_request(prompt, "premium", counter=WhitespaceCounter(), bias=1.0)
    assert est.category == "report"
    assert est.input_tokens == 16
    assert est.est_output_tokens == 624  # 512 * 1.2 * 1.016 = 624.23
    assert est.est_total_tokens == 640
    assert est.size == "long"


# ---------------------------------------------------------------- counters


def test_whitespace_counter():
    assert WhitespaceCounter().count("  a  b\tc\nd ") == 4


def test_tokenizer_counter_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TokenizerCounter(tmp_path / "nope")


def test_tokenizer_counter_without_libraries_is_a_clear_error(tmp_path, monkeypatch):
    """Neither tokenizer library importable (faked: both are installed here) -> an ImportError that says what to install."""
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # a None entry makes `import tokenizers` raise ImportError
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="install 'tokenizers'"):
        TokenizerCounter(tmp_path)


def test_tokenizer_counter_counts_with_a_real_local_tokenizer(tmp_path):
    """A byte-level BPE trained here (nothing downloaded) counts tokens, and more of them than words."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = ["Summarize the architecture of the KV cache in PagedAttention.", "Explain BGP route selection."] * 50
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))
    counter = TokenizerCounter(tmp_path)
    text = "Summarize the unfamiliar Kubernetes scheduler internals"
    assert counter.count(text) == len(tok.encode(text, add_special_tokens=False).ids)
    assert counter.count(text) > WhitespaceCounter().count(text)


def test_words_from_tokens():
    assert words_from_tokens(64) == 48
    assert words_from_tokens(1) == 1
    assert words_from_tokens(0) == 0
    assert words_from_tokens(np.array([0, 1, 512])).tolist() == [0, 1, 384]


# ---------------------------------------------------------------- error model


def test_error_model_fixed_ratio_is_exact():
    m = EstimatorErrorModel(default=RatioDist(median=2.0), per_group={"b": RatioDist(median=0.5)}, distribution="fixed")
    assert m.estimates([100, 100, 3], ["a", "b", "a"]).tolist() == [50, 200, 2]
    assert m.estimates([1], ["a"]).tolist() == [1]  # never below 1


def test_error_model_change_points_switch_the_distribution_in_time():
    m = EstimatorErrorModel(
        default=RatioDist(median=1.0), change_points=[(100.0, {"a": RatioDist(median=4.0)})], distribution="fixed"
    )
    assert m.estimates([400, 400, 400], ["a", "a", "b"], [99.9, 100.0, 200.0]).tolist() == [400, 100, 400]


def test_error_model_lognormal_is_seeded_and_has_the_given_median():
    groups = ["a"] * 20000
    r1 = EstimatorErrorModel(default=RatioDist(1.5, 0.4), seed=3).ratios(groups)
    r2 = EstimatorErrorModel(default=RatioDist(1.5, 0.4), seed=3).ratios(groups)
    assert np.array_equal(r1, r2)
    assert np.median(r1) == pytest.approx(1.5, rel=0.02)
    assert np.std(np.log(r1)) == pytest.approx(0.4, rel=0.03)


# ---------------------------------------------------------------- calibration


def test_ema_update_by_hand():
    cal = DriftCalibrator()
    fb = cal.observe(category="report", actual_output=256, now=1.0)  # measured 0.5
    assert (fb.old_bias, fb.measured_bias) == (1.0, 0.5)
    assert fb.new_bias == pytest.approx(0.95)  # 0.9 * 1.0 + 0.1 * 0.5
    fb = cal.observe(category="report", actual_output=1024, now=2.0)  # measured 2.0
    assert fb.new_bias == pytest.approx(1.055)  # 0.9 * 0.95 + 0.1 * 2.0
    assert cal.bias(category="report") == pytest.approx(1.055)
    assert cal.bias(category="summary") == 1.0  # one bias per category


def test_ema_measured_is_clamped():
    cal = DriftCalibrator()
    assert cal.observe(category="short_qa", actual_output=10_000).measured_bias == 3.0
    assert cal.bias(category="short_qa") == pytest.approx(1.2)
    assert cal.observe(category="summary", actual_output=0).measured_bias == 0.25
    assert cal.bias(category="summary") == pytest.approx(0.925)


def test_calibration_off_keeps_the_bias_at_one():
    cal = DriftCalibrator(enabled=False)
    fb = cal.observe(category="report", actual_output=10)
    assert (fb.old_bias, fb.measured_bias, fb.new_bias) == (1.0, 1.0, 1.0)
    assert cal.bias(category="report") == 1.0
    assert cal.predict(category="report", tenant="premium", input_tokens=20) == 626


def test_calibrated_prediction_uses_the_current_bias():
    cal = DriftCalibrator()
    cal.observe(category="technical", actual_output=192)  # 0.9 + 0.05 = 0.9500000000000001 in floats
    bias = cal.bias(category="technical")
    assert bias == pytest.approx(0.95)
    # the float bias lands just above 0.95, so this is 456, where bias 0.95 gives 455
    assert cal.predict(category="technical", tenant="standard", input_tokens=250) == 456
    assert estimate_output("technical", "standard", 250, bias) == 456


def test_granularity_keys():
    by_tenant = DriftCalibrator(granularity="tenant")
    by_tenant.observe(category="report", tenant="batch", actual_output=256)
    assert by_tenant.bias(category="summary", tenant="batch") == pytest.approx(0.95)
    assert by_tenant.bias(category="report", tenant="premium") == 1.0
    both = DriftCalibrator(granularity="tenant_category")
    both.observe(category="report", tenant="batch", actual_output=256)
    assert both.biases == {"batch/report": pytest.approx(0.95)}
    with pytest.raises(ValueError, match="granularity"):
        DriftCalibrator(granularity="hour")


def test_explicit_base_replaces_the_category_base():
    cal = DriftCalibrator()
    assert cal.observe(category="report", actual_output=100, base=50).measured_bias == 2.0


def test_history_records_every_update():
    cal = DriftCalibrator()
    for t, actual in enumerate([512, 256, 128]):
        cal.observe(category="report", actual_output=actual, now=float(t))
    h = cal.history()
    assert h.columns == ["time_s", "key", "bias"]
    assert h["time_s"].to_list() == [0.0, 1.0, 2.0]
    assert h["bias"].to_list() == pytest.approx([1.0, 0.95, 0.88])


# ---------------------------------------------------------------- error tracking


def test_mae_and_rmse_by_hand():
    tr = ErrorTracker()
    for est, act, cat, t in [(10, 12, "a", 0.5), (20, 18, "a", 1.5), (30, 35, "b", 1.7)]:
        tr.record(estimated=est, actual=act, category=cat, tenant="x", time_s=t)
    assert tr.mae() == pytest.approx(3.0)  # |-2|, |2|, |-5|
    assert tr.rmse() == pytest.approx(math.sqrt(11.0))  # (4 + 4 + 25) / 3
    by_cat = tr.by("category")
    assert by_cat["category"].to_list() == ["a", "b"]
    assert by_cat["mae"].to_list() == pytest.approx([2.0, 5.0])
    assert by_cat["rmse"].to_list() == pytest.approx([2.0, 5.0])
    win = tr.over_time(1.0)
    assert win["window_start_s"].to_list() == [0.0, 1.0]
    assert win["n"].to_list() == [1, 2]
    assert win["mae"].to_list() == pytest.approx([2.0, 3.5])
    assert mae_rmse([10, 20, 30], [12, 18, 35]) == pytest.approx((3.0, math.sqrt(11.0)))


def test_error_reduction_percentages():
    base, better = ErrorTracker(), ErrorTracker()
    base.record(estimated=100, actual=50)
    better.record(estimated=80, actual=50)
    assert error_reduction(base, better) == pytest.approx({"mae_pct": 40.0, "rmse_pct": 40.0})


def test_empty_tracker_reports_nan():
    assert math.isnan(ErrorTracker().mae())


# ---------------------------------------------------------------- learned predictor


def synthetic_completions(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    level = {"short_qa": 60, "summary": 230, "technical": 350, "report": 480}
    for _ in range(n):
        cat = str(rng.choice(list(level)))
        tenant = str(rng.choice(["premium", "standard", "batch"]))
        yield cat, tenant, int(rng.integers(10, 30)), int(level[cat] * rng.uniform(0.9, 1.1))


@pytest.mark.parametrize("kind", ["hgb_quantile", "linear_quantile", "sgd"])
def test_length_predictor_learns_the_category_levels(kind):
    model = OnlineLengthPredictor(kind=kind, min_samples=200, refit_every=1000, seed=1)
    assert model.predict(category="report", tenant="premium", input_tokens=20) == 626  # formula until fitted
    for cat, tenant, n_in, actual in synthetic_completions(200 if kind != "sgd" else 1500):
        model.observe(category=cat, tenant=tenant, input_tokens=n_in, actual_output=actual)
    assert model.fitted
    assert model.predict(category="report", tenant="batch", input_tokens=20) == pytest.approx(480, rel=0.12)
    assert model.predict(category="short_qa", tenant="premium", input_tokens=20) == pytest.approx(60, rel=0.25)


def test_length_predictor_is_deterministic_for_a_seed():
    preds = []
    for _ in range(2):
        model = OnlineLengthPredictor(min_samples=50, refit_every=50, seed=7)
        for cat, tenant, n_in, actual in synthetic_completions(100, seed=2):
            model.observe(category=cat, tenant=tenant, input_tokens=n_in, actual_output=actual)
        preds.append([model.predict(category=c, tenant="standard", input_tokens=15) for c in BASE_TOKENS])
    assert preds[0] == preds[1]

"""The paper's headline numbers, computed from an experiment's table, next to the paper's own.

Everything here is derived from :class:`driftsim.experiments.result.ExperimentResult`;
only :data:`PAPER` is typed in, from the paper's abstract (see
``shared/reference/driftsched.md``). Where driftsim and the paper disagree
the note says so, with the gap computed against a tolerance in percentage
points, never hard-coded.

Averaging. A reduction or a change is computed per paired run (same seed,
same workload, only the compared switch differs) and then averaged over
seeds (and over policies where stated): pairing removes the workload's own
variation from the comparison. The paper says "on average" without saying
over what; the closest analogue here is the mean over policies and seeds,
shown per counter and for both counters together.
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl

from driftsim.admission.estimation import SAFETY, WORDS_PER_TOKEN
from driftsim.experiments.result import OVERALL, ExperimentResult

#: The paper's reported figures (percent; negative = lower latency than FIFO).
PAPER: dict[str, float] = {
    "mae_reduction_pct": 38.8,
    "rmse_reduction_pct": 40.5,
    "sjf_vs_fifo_p50_pct": -42.0,
    "sjf_vs_fifo_p99_pct": -16.0,
}


def config_label(counter: str, calibration: bool) -> str:
    """``"whitespace, calibration on"`` style label of a counter x calibration cell."""
    return f"{counter}, calibration {'on' if calibration else 'off'}"


#: Display order of the paper's tiers (most urgent first); other tenants follow alphabetically, "overall" last.
TIER_ORDER: tuple[str, ...] = ("premium", "standard", "batch")


def tier_order(names) -> list[str]:
    """Tenants in display order: the paper's tiers by urgency, then others alphabetically, ``overall`` last."""
    names = set(names)
    known = [t for t in TIER_ORDER if t in names]
    rest = sorted(names - set(TIER_ORDER) - {OVERALL})
    return known + rest + ([OVERALL] if OVERALL in names else [])


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else math.nan


def _overall(result: ExperimentResult) -> pl.DataFrame:
    return result.table.filter(pl.col("tenant") == OVERALL)


def calibration_effect(result: ExperimentResult) -> dict:
    """Percent reduction of MAE and RMSE from calibration, per counter (mean over policies and seeds) and overall."""
    t = _overall(result)
    if set(t["calibration"].unique().to_list()) != {False, True}:
        return {}
    keys = ["seed", "policy", "counter"]
    off = t.filter(~pl.col("calibration")).select(*keys, mae_off="mae", rmse_off="rmse", mis_off="misclassification")
    on = t.filter(pl.col("calibration")).select(*keys, mae_on="mae", rmse_on="rmse", mis_on="misclassification")
    paired = off.join(on, on=keys).with_columns(
        mae_red=100 * (1 - pl.col("mae_on") / pl.col("mae_off")),
        rmse_red=100 * (1 - pl.col("rmse_on") / pl.col("rmse_off")),
    )
    out: dict[str, Any] = {"per_counter": {}}
    for counter in result.meta["counters"]:
        p = paired.filter(pl.col("counter") == counter)
        by_policy = {
            pol: {"mae_reduction_pct": _mean(g["mae_red"]), "rmse_reduction_pct": _mean(g["rmse_red"])}
            for (pol,), g in p.group_by("policy", maintain_order=True)
        }
        out["per_counter"][counter] = {
            "mae_reduction_pct": _mean(p["mae_red"]),
            "rmse_reduction_pct": _mean(p["rmse_red"]),
            "mae_reduction_range_pct": [float(p["mae_red"].min()), float(p["mae_red"].max())],
            "mae_off": _mean(p["mae_off"]),
            "mae_on": _mean(p["mae_on"]),
            "misclassification_off": _mean(p["mis_off"]),
            "misclassification_on": _mean(p["mis_on"]),
            "by_policy": by_policy,
        }
    out["all_counters"] = {"mae_reduction_pct": _mean(paired["mae_red"]), "rmse_reduction_pct": _mean(paired["rmse_red"])}
    return out


def sjf_vs_fifo(result: ExperimentResult) -> dict:
    """Percent change of SJF's median and P99 E2E against FIFO, per counter x calibration (mean over seeds)."""
    t = _overall(result)
    if not {"sjf", "fifo"} <= set(t["policy"].unique().to_list()):
        return {}
    keys = ["seed", "counter", "calibration"]
    fifo = t.filter(pl.col("policy") == "fifo").select(*keys, f50="e2e_p50_s", f99="e2e_p99_s", fmean="e2e_mean_s")
    sjf = t.filter(pl.col("policy") == "sjf").select(*keys, s50="e2e_p50_s", s99="e2e_p99_s", smean="e2e_mean_s")
    paired = fifo.join(sjf, on=keys)
    out = {}
    for (counter, cal), g in paired.group_by("counter", "calibration", maintain_order=True):
        out[config_label(counter, cal)] = {
            "counter": counter,
            "calibration": cal,
            "p50_pct": _mean(100 * (g["s50"] / g["f50"] - 1)),
            "p99_pct": _mean(100 * (g["s99"] / g["f99"] - 1)),
            "mean_pct": _mean(100 * (g["smean"] / g["fmean"] - 1)),
            "fifo_p50_s": _mean(g["f50"]),
            "sjf_p50_s": _mean(g["s50"]),
            "fifo_p99_s": _mean(g["f99"]),
            "sjf_p99_s": _mean(g["s99"]),
        }
    return out


def per_tier(result: ExperimentResult) -> dict:
    """Latency per tier (and overall) per policy, mean over seeds; keyed by counter x calibration, then policy, then tenant."""
    cols = ["e2e_mean_s", "e2e_p50_s", "e2e_p90_s", "e2e_p99_s", "queue_wait_p50_s", "queue_wait_p99_s"]
    agg = result.table.group_by("counter", "calibration", "policy", "tenant", maintain_order=True).agg(
        *(pl.col(c).mean() for c in cols)
    )
    out: dict[str, dict] = {}
    for row in agg.iter_rows(named=True):
        cell = out.setdefault(config_label(row["counter"], row["calibration"]), {})
        cell.setdefault(row["policy"], {})[row["tenant"]] = {c: row[c] for c in cols}
    return {
        label: {pol: {t: groups[t] for t in tier_order(groups)} for pol, groups in cell.items()} for label, cell in out.items()
    }


def jain_by_policy(result: ExperimentResult) -> dict:
    """Jain's index over per-tenant mean E2E, per counter x calibration and policy (mean over seeds)."""
    agg = _overall(result).group_by("counter", "calibration", "policy", maintain_order=True).agg(pl.col("jain_e2e").mean())
    out: dict[str, dict] = {}
    for row in agg.iter_rows(named=True):
        out.setdefault(config_label(row["counter"], row["calibration"]), {})[row["policy"]] = row["jain_e2e"]
    return out


def scheduler_vs_calibration(result: ExperimentResult) -> dict:
    """How much the policy moves median E2E compared with how much calibration does.

    ``scheduler_spread_pct``: (slowest - fastest policy) / slowest, per
    seed x counter x calibration, averaged. ``calibration_effect_pct``:
    ``|p50(on) / p50(off) - 1|`` per seed x counter x policy, mean and max.
    """
    t = _overall(result)
    spread = (
        t.group_by("seed", "counter", "calibration")
        .agg(((pl.col("e2e_p50_s").max() - pl.col("e2e_p50_s").min()) / pl.col("e2e_p50_s").max() * 100).alias("s"))
    )
    out = {"scheduler_spread_pct": _mean(spread["s"]) if len(result.meta["policies"]) > 1 else math.nan}
    if set(t["calibration"].unique().to_list()) == {False, True}:
        keys = ["seed", "counter", "policy"]
        off = t.filter(~pl.col("calibration")).select(*keys, off="e2e_p50_s")
        on = t.filter(pl.col("calibration")).select(*keys, on="e2e_p50_s")
        eff = off.join(on, on=keys).with_columns(e=(pl.col("on") / pl.col("off") - 1).abs() * 100)
        out["calibration_effect_pct"] = _mean(eff["e"])
        out["calibration_effect_max_pct"] = float(eff["e"].max())
        out["calibration_effect_max_policy"] = eff.sort("e", descending=True)["policy"][0]
    return out


def final_bias(result: ExperimentResult) -> dict:
    """Final calibration bias per counter and category (mean over seeds and policies), calibration on."""
    fb = result.final_bias
    if fb.height == 0:
        return {}
    agg = fb.group_by("counter", "category").agg(pl.col("bias").mean()).sort("counter", "category")
    out: dict[str, dict] = {}
    for row in agg.iter_rows(named=True):
        out.setdefault(row["counter"], {})[row["category"]] = row["bias"]
    return out


def relative_mae(result: ExperimentResult) -> dict:
    """MAE / mean actual output, per counter x calibration (mean over policies and seeds): comparable across units."""
    agg = _overall(result).group_by("counter", "calibration", maintain_order=True).agg(pl.col("rel_mae").mean())
    return {config_label(r["counter"], r["calibration"]): r["rel_mae"] for r in agg.iter_rows(named=True)}


def aging_equals_priority(result: ExperimentResult) -> dict | None:
    """Whether aging and priority produced identical latencies in every run, with the reason from the data.

    The aging score ``priority - 0.01 * waited`` orders like priority unless
    two requests arrived more than ``1 / 0.01 = 100`` s apart while both wait.
    """
    t = result.table
    if not {"aging", "priority"} <= set(t["policy"].unique().to_list()):
        return None
    keys = ["seed", "counter", "calibration", "tenant"]
    a = t.filter(pl.col("policy") == "aging").select(*keys, a="e2e_mean_s", a99="e2e_p99_s")
    p = t.filter(pl.col("policy") == "priority").select(*keys, p="e2e_mean_s", p99="e2e_p99_s")
    j = a.join(p, on=keys)
    identical = bool(((j["a"] - j["p"]).abs().max() < 1e-9) and ((j["a99"] - j["p99"]).abs().max() < 1e-9))
    spans = {}
    req = result.requests
    if req.height:
        m = result.meta
        one = req.filter(pl.col("policy") == "aging", pl.col("counter") == m["counters"][0], pl.col("calibration") == m["calibration"][0])
        for (phase,), g in one.group_by("phase", maintain_order=True):
            spans[phase] = float(g["arrival_s"].max() - g["arrival_s"].min())
    return {"identical": identical, "arrival_span_s": spans}


def beyond_the_paper(result: ExperimentResult) -> dict:
    """Regret to the oracle and the learned predictor's error, next to the EMA's (token units, means over seeds).

    ``regret``: SJF's E2E p50/p99 with each estimator minus SJF's with the
    oracle (seconds). ``mae``: estimation MAE in tokens under SJF for the EMA
    (tokenizer counter, calibration on and off) and the learned predictor.
    """
    b = result.beyond
    if b.height == 0 or "sjf" not in set(b["policy"]):
        return {}
    overall = b.filter(pl.col("tenant") == "overall", pl.col("policy") == "sjf")
    ema = _overall(result).filter(pl.col("policy") == "sjf", pl.col("counter") == "tokenizer")

    def mean_of(df: pl.DataFrame, col: str) -> float:
        return _mean(df[col].to_list()) if df.height else math.nan

    oracle = overall.filter(pl.col("estimator") == "oracle")
    learned = overall.filter(pl.col("estimator") == "learned")
    out: dict = {"regret": {}, "mae": {}}
    variants = {
        "learned": learned,
        "ema tokenizer, calibration on": ema.filter(pl.col("calibration")),
        "ema tokenizer, calibration off": ema.filter(~pl.col("calibration")),
    }
    for name, df in variants.items():
        out["regret"][name] = {
            stat: mean_of(df, f"e2e_{stat}_s") - mean_of(oracle, f"e2e_{stat}_s") for stat in ("p50", "p99")
        }
        out["mae"][name] = mean_of(df, "mae")
    return out


def compute_headline(result: ExperimentResult) -> dict:
    """All headline numbers as one JSON-ready dict."""
    h = {
        "paper": dict(PAPER),
        "calibration": calibration_effect(result),
        "sjf_vs_fifo": sjf_vs_fifo(result),
        "per_tier": per_tier(result),
        "jain": jain_by_policy(result),
        "scheduler_vs_calibration": scheduler_vs_calibration(result),
        "final_bias": final_bias(result),
        "relative_mae": relative_mae(result),
        "aging_vs_priority": aging_equals_priority(result),
        "beyond": beyond_the_paper(result),
    }
    h["notes"] = notes(result, h)
    return h


# --------------------------------------------------------------------------- comparison table
def compare_note(ours: float, paper: float, tolerance_pts: float) -> str:
    """'within N points of the paper (+x.x)' or 'differs from the paper by +x.x points (more than N)'."""
    if ours is None or math.isnan(ours):
        return "not computed (a needed configuration is missing from the grid)"
    diff = ours - paper
    if abs(diff) > tolerance_pts:
        return f"differs from the paper by {diff:+.1f} points (more than {tolerance_pts:g})"
    return f"within {tolerance_pts:g} points of the paper ({diff:+.1f})"


def _row(metric: str, paper: Any, ours: Any, unit: str, note: str) -> dict:
    return {"metric": metric, "paper": paper, "driftsim": ours, "unit": unit, "note": note}


def headline_rows(result: ExperimentResult, *, tolerance_pts: float = 10.0) -> list[dict]:
    """The headline table: ``{metric, paper, driftsim, unit, note}`` per row; ``paper`` is None where it reports nothing."""
    h = result.headline or compute_headline(result)
    view = view_config(result)
    return [
        *_calibration_rows(h, tolerance_pts),
        *_sjf_rows(h, tolerance_pts),
        *_bias_rows(h),
        *_per_view_rows(h, view),
    ]


def _calibration_rows(h: dict, tolerance_pts: float) -> list[dict]:
    """MAE and RMSE reductions from calibration (per counter and both together) and the job-size misclassification."""
    rows: list[dict] = []
    cal = h["calibration"]
    fb = h["final_bias"]
    for counter, c in cal.get("per_counter", {}).items():
        lo, hi = c["mae_reduction_range_pct"]
        why = ""
        if counter == "tokenizer" and counter in fb:
            biases = list(fb[counter].values())
            why = (
                f"; final biases {min(biases):.2f}-{max(biases):.2f}, so there is little drift to remove: what remains is the "
                "spread of output lengths and the tier safety factors, which a per-category bias cannot learn"
            )
        for m in ("mae", "rmse"):
            note = compare_note(c[f"{m}_reduction_pct"], PAPER[f"{m}_reduction_pct"], tolerance_pts)
            if m == "mae":
                note += f"; range over policies and seeds {lo:.1f} to {hi:.1f} %" + why
            rows.append(_row(f"{m.upper()} reduction from calibration, {counter} counter", PAPER[f"{m}_reduction_pct"],
                             c[f"{m}_reduction_pct"], "%", note))  # fmt: skip
    if "all_counters" in cal and len(cal.get("per_counter", {})) > 1:
        for m in ("mae", "rmse"):
            v = cal["all_counters"][f"{m}_reduction_pct"]
            rows.append(_row(f"{m.upper()} reduction from calibration, both counters", PAPER[f"{m}_reduction_pct"], v, "%",
                             compare_note(v, PAPER[f"{m}_reduction_pct"], tolerance_pts)
                             + "; the paper does not say what its average is over"))  # fmt: skip
    for counter, c in cal.get("per_counter", {}).items():
        off, on = c["misclassification_off"], c["misclassification_on"]
        note = f"calibration {'raises' if on > off else 'lowers'} it"
        if on > off:
            note += (
                ": estimates move towards the mean output, but most outputs run to max_tokens in driftsim's output model, "
                "so budgets near the 128 / 512-token size boundaries flip class"
            )
        rows.append(_row(f"Job-size misclassification, {counter} counter (calibration off -> on)", None,
                         f"{100 * off:.1f} % -> {100 * on:.1f} %", "", note))  # fmt: skip
    return rows


def _sjf_rows(h: dict, tolerance_pts: float) -> list[dict]:
    """SJF against FIFO (median and P99 E2E), and how far the scheduler moves latency compared with calibration."""
    rows: list[dict] = []
    for label, s in h["sjf_vs_fifo"].items():
        for q in ("p50", "p99"):
            name = "median" if q == "p50" else "P99"
            rows.append(_row(f"SJF vs FIFO {name} E2E, {label}", PAPER[f"sjf_vs_fifo_{q}_pct"], s[f"{q}_pct"], "%",
                             compare_note(s[f"{q}_pct"], PAPER[f"sjf_vs_fifo_{q}_pct"], tolerance_pts)
                             + f" (FIFO {s[f'fifo_{q}_s']:.0f} s, SJF {s[f'sjf_{q}_s']:.0f} s)"))  # fmt: skip
    svc = h["scheduler_vs_calibration"]
    if "calibration_effect_pct" in svc and not math.isnan(svc["scheduler_spread_pct"]):
        agrees = svc["scheduler_spread_pct"] > svc["calibration_effect_max_pct"]
        rows.append(_row(
            "Median E2E moved by the scheduler vs by calibration", "scheduler > calibration",
            f"{svc['scheduler_spread_pct']:.1f} % vs {svc['calibration_effect_pct']:.1f} % (max {svc['calibration_effect_max_pct']:.1f} %)",
            "", ("agrees" if agrees else "disagrees") + ": spread between the fastest and slowest policy vs the change calibration makes "
            f"at a fixed policy (largest under {svc['calibration_effect_max_policy']}); only SJF reads the estimates",
        ))  # fmt: skip
    return rows


def _bias_rows(h: dict) -> list[dict]:
    """The calibrator's final bias per counter, and relative MAE with and without calibration."""
    rows: list[dict] = []
    for counter, cats in h["final_bias"].items():
        lo, hi = min(cats.values()), max(cats.values())
        if counter == "tokenizer":
            far = max(abs(b - 1) for b in cats.values())
            rows.append(_row("Final calibration bias, tokenizer counter", "near 1.0", f"{lo:.2f}-{hi:.2f}", "",
                             ("agrees" if far <= 0.15 else "disagrees") + f": largest distance from 1.0 is {far:.2f} "
                             "(mean output / base length in tokens; our output model's choice)"))  # fmt: skip
        else:
            rows.append(_row(f"Final calibration bias, {counter} counter", "drifts from 1.0 (no figure)", f"{lo:.2f}-{hi:.2f}", "",
                             f"words per token ({WORDS_PER_TOKEN:g}, fixed in driftsim) times mean output / base"))  # fmt: skip
    rel = h["relative_mae"]
    ws_on, tok_off = rel.get(config_label("whitespace", True)), rel.get(config_label("tokenizer", False))
    ws_off, tok_on = rel.get(config_label("whitespace", False)), rel.get(config_label("tokenizer", True))
    if None not in (ws_on, tok_off, ws_off, tok_on):
        rows.append(_row(
            "Relative MAE (MAE / mean output): whitespace off -> on vs tokenizer off -> on",
            "whitespace + calibration approaches tokenizer",
            f"{ws_off:.3f} -> {ws_on:.3f} vs {tok_off:.3f} -> {tok_on:.3f}", "",
            ("agrees" if abs(ws_on - tok_off) < abs(ws_off - tok_off) else "disagrees")
            + ": units differ (words vs tokens), so each MAE is divided by its mean actual output",
        ))  # fmt: skip
    return rows


def _per_view_rows(h: dict, view: str) -> list[dict]:
    """Median E2E per tier and Jain's index per policy, in the configuration ``view``."""
    rows: list[dict] = []
    for policy, groups in h["per_tier"].get(view, {}).items():
        parts = [f"{t} {g['e2e_p50_s']:.0f}" for t, g in groups.items() if t != OVERALL]
        rows.append(_row(f"Median E2E per tier (s), {policy}, {view}", None, " / ".join(parts), "s",
                         "the paper reports no per-tier figures in the material we have"))  # fmt: skip
    for policy, j in h["jain"].get(view, {}).items():
        rows.append(_row(f"Jain's index over tenants' mean E2E, {policy}, {view}", None, j, "",
                         "the original reports no fairness metric; 1 = every tier waits alike, 1/3 = one tier gets everything"))  # fmt: skip
    return rows


def view_config(result: ExperimentResult) -> str:
    """The counter x calibration cell shown in single-configuration tables: the first counter, calibration on if run.

    Only SJF reads the estimates, so the other policies' latencies are the
    same in every cell.
    """
    cal = True if True in result.meta["calibration"] else result.meta["calibration"][0]
    return config_label(result.meta["counters"][0], cal)


def notes(result: ExperimentResult, headline: dict | None = None) -> list[str]:
    """Honest caveats about what the simulation can and cannot reproduce, partly computed from the run."""
    m = result.meta
    headline = headline if headline is not None else (result.headline or {})
    out = [
        f"Profile {m['profile']} is {m['profile_source']} (a roofline from datasheet numbers), not a measurement on the paper's L4: "
        "absolute latencies are the model's; compare the relative changes.",
        "Real output lengths come from driftsim's output model (per job type: the output hits max_tokens with some probability, "
        "else stops early, Beta-distributed), not from Qwen1.5-1.8B-Chat at temperature 0.7; estimation errors and the "
        "calibrated biases depend on that choice.",
        "Whitespace counter: prompts are counted with split(); outputs are known only as token counts, so their word count is "
        f"taken as {WORDS_PER_TOKEN:g} x tokens (no per-text variation).",
    ]
    if m.get("tokenizer_path"):
        out.append(f"Tokenizer counter: prompts recounted with the tokenizer at {m['tokenizer_path']}; outputs in real tokens.")
    else:
        lo, hi = m["prompt_length_range"] or [0, 0]
        out.append(
            "Tokenizer counter without --tokenizer: the prompt length is the trace's input_tokens (counted with split() by the "
            "generator, in the engine too) and the output feedback is the real token count. Prompts are "
            f"{lo}-{hi} words, so the input factor 1 + len/1000 is {1 + lo / 1000:.3f}-{1 + hi / 1000:.3f} and would move by "
            "about 2 % at most with real tokens."
        )
    if m["pause"] == "drain":
        drains = result.table.filter(pl.col("tenant") == OVERALL)["learning_drain_s"]
        out.append(
            f"Between phases the stress phase starts {m['phase_gap_s']:g} s after the learning phase drains, measured per run "
            f"(drain at {drains.min():.0f}-{drains.max():.0f} s); the original's 2 s queue polling is not modelled."
        )
    else:
        out.append(f"Fixed pause: the stress phase starts {m['phase_gap_s']:g} s after the last learning arrival, not after the queue drains.")
    out.append(
        f"{len(m['seeds'])} seed(s) per configuration; every configuration of a seed replays the same workload, so comparisons "
        "are paired (the paper's runs each drew fresh outputs)."
    )
    sjf = headline.get("per_tier", {}).get(view_config(result), {}).get("sjf")
    if sjf and {"premium", "batch"} <= set(sjf) and sjf["premium"]["e2e_p50_s"] > sjf["batch"]["e2e_p50_s"]:
        out.append(
            f"SJF inverts the tiers (median E2E premium {sjf['premium']['e2e_p50_s']:.0f} s, batch {sjf['batch']['e2e_p50_s']:.0f} s): "
            f"the estimator's safety factors (premium {SAFETY['premium']:g}, batch {SAFETY['batch']:g}) scale the estimates SJF "
            "orders by, so batch jobs look shortest."
        )
    ap = headline.get("aging_vs_priority") or aging_equals_priority(result)
    if ap and ap["identical"]:
        spans = ", ".join(f"{k} {v:.0f} s" for k, v in ap["arrival_span_s"].items())
        out.append(
            "Aging and priority gave identical latencies in every run: with rate 0.01/s a lower tier overtakes a higher one only "
            f"if it arrived at least 100 s earlier, and each phase's arrivals span less than that ({spans}), with the queue "
            "drained in between."
        )
    return out


def format_value(value: Any, unit: str = "") -> str:
    """A headline cell as text: None as a dash, numbers rounded by unit, strings as they are."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if unit == "%":
        return f"{value:.1f} %"
    if unit == "s":
        return f"{value:.1f} s"
    return f"{value:.3f}"


def is_discrepancy(note: str) -> bool:
    """True when a headline note reports a gap to the paper (the computed 'differs' / 'disagrees' wording)."""
    return note.startswith(("differs", "disagrees"))

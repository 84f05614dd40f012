"""Rows of ``validation/published_runs.toml`` from a GuideLLM benchmark report (``guidellm-results.json``).

Each benchmark of the report (a sweep's synchronous, throughput and constant-rate stages) becomes one
``[workload.*]`` table, its completed requests in send order (prompt and output tokens as the client
counted them, send times from ``info.timings.request_start``, relative to the stage's first send), and
``[[measurement]]`` rows of TTFT, TPOT and E2E medians computed from the same per-request records with
vLLM's client definitions (``validation/published.py``): TPOT is (latency - TTFT) / (tokens - 1), which
is GuideLLM's per-request ``inter_token_latency_ms``. The script also prints GuideLLM's own summary
medians beside them as comments, a check that the records are the ones the report summarises.
Requests the server refused (GuideLLM's ``errored``: prompts over the model's context) never ran and
are left out, and said so.

    python bench/published/guidellm_rows.py REPORT --prefix NAME --source KEY --shared-prefix 1024 \\
        --setup "gpu='...', ..." > rows.toml

``--setup`` is pasted into every measurement (the engine's limits and the URL, as TOML assignments).
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def _stage_name(strategy: dict) -> str:
    kind = strategy["type_"]
    return f"constant-{strategy['rate']:.3f}".replace(".", "_") if kind == "constant" else kind  # a dot nests TOML tables


def _toml_list(values: list, per_line: int = 12) -> str:
    lines = [", ".join(str(v) for v in values[i:i + per_line]) for i in range(0, len(values), per_line)]
    return "[\n    " + ",\n    ".join(lines) + ",\n]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report")
    ap.add_argument("--prefix", required=True, help="prefix of the workload names and row ids")
    ap.add_argument("--source", required=True, help="the [source.*] key the rows cite")
    ap.add_argument("--shared-prefix", type=int, default=0, help="tokens every prompt shares (GuideLLM prefix_tokens)")
    ap.add_argument("--setup", required=True, help="TOML assignments pasted into every measurement")
    args = ap.parse_args()
    report = json.load(open(args.report, encoding="utf-8"))
    for bench in report["benchmarks"]:
        strategy = bench["config"]["strategy"]
        name = f"{args.prefix}-{_stage_name(strategy)}"
        done = sorted(bench["requests"]["successful"], key=lambda r: r["info"]["timings"]["request_start"])
        refused = len(bench["requests"].get("errored", []))
        start = np.array([r["info"]["timings"]["request_start"] for r in done])
        send = [round(float(t), 6) for t in start - start[0]]
        ins = [int(r["prompt_tokens"]) for r in done]
        outs = [int(r["output_tokens"]) for r in done]
        ttft = np.array([r["time_to_first_token_ms"] for r in done])
        e2e = np.array([r["request_latency"] for r in done]) * 1e3
        out = np.array(outs)
        multi = out > 1
        tpot = (e2e - ttft)[multi] / (out[multi] - 1)
        summary = bench["metrics"]
        rate = strategy.get("rate")
        print(f"[workload.{name}]")
        print(f'source = "{args.source}"')
        what = (f"GuideLLM {strategy['type_']} stage" + (f" at {rate:.4f} req/s" if rate else "")
                + f": its {len(done)} completed requests in send order"
                + (f" ({refused} refused by the server for a prompt over the model's context, left out)" if refused else ""))
        print(f'description = "{what}"')
        print(f"shared_prefix_tokens = {args.shared_prefix}")
        print(f"input_lens = {_toml_list(ins)}")
        print(f"output_lens = {_toml_list(outs)}")
        print(f"send_s = {_toml_list(send, 6)}")
        print()
        for metric, values, theirs in (("ttft_median_ms", ttft, summary["time_to_first_token_ms"]),
                                       ("tpot_median_ms", tpot, summary["inter_token_latency_ms"]),
                                       ("e2e_median_ms", e2e, summary["request_latency"])):
            guide = theirs["successful"]["median"] * (1e3 if metric.startswith("e2e") else 1.0)
            print(f"# GuideLLM's own summary median: {guide:.6g}")
            print("[[measurement]]")
            print(f'id = "{name}-{metric.rsplit("_", 1)[0].replace("_", "-")}"')
            print(f'source = "{args.source}"')
            print(args.setup)
            print(f'workload = "{name}"')
            print('request_rate = "recorded"')
            print(f"max_concurrency = {1 if strategy['type_'] == 'synchronous' else 0}")
            print(f'metric = "{metric}"')
            print(f"published = {float(np.median(values)):.6g}")
            print(f'note = "median of the stage\'s per-request records ({len(values)} requests), vLLM\'s client definitions"')
            print()


if __name__ == "__main__":
    main()

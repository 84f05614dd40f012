"""Lone prefill steps of a real vLLM run against the composed kernel step.

Reads vLLM's OpenTelemetry request traces (one JSON object per line, spans
named ``llm_request`` with ``gen_ai.latency.time_in_model_prefill``), takes
the first ``--lone`` requests by arrival (a synchronous stage: one request
in the engine at a time, so its prefill is one step of its uncached
tokens), and prints each one's measured prefill time beside the step that
`costmodel/kernels/compose.py` composes for it, then the median ratio and
a least-squares line real = a + b x composed. The first request finds an
empty cache; every later one finds ``--prefix`` tokens cached. With
``--guidellm REPORT`` (the same run's GuideLLM report) it also prints what
the API server adds in front of the engine: from the client's send to the
engine's arrival time, and the client's TTFT over the engine's.

    python bench/published/prefill_steps.py traces.json --gpu h100 \\
        --model codellama/CodeLlama-34b-Instruct-hf --prefix 1024 --lone 40

The BLIS ground-truth run that VALIDATION.md replays:
https://github.com/inference-sim/inference-sim/blob/e7a4aa3715982f089bddd0441e85e0a7d1690ec2/eval/ground_truth/jan20-prefill-llama7b-tp1-1/traces.json
(Apache-2.0).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from driftsim.costmodel.kernels.architecture import load_architecture
from driftsim.costmodel.kernels.build import HOST, kernel_source
from driftsim.costmodel.kernels.compose import IterationBatch, IterationComposer


def lone_requests(path: str, count: int) -> list[tuple[float, int, float, float]]:
    """(arrival s, prompt tokens, prefill s, engine TTFT s) of the first ``count`` requests by arrival."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            for rs in json.loads(line)["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    for span in ss["spans"]:
                        a = {x["key"]: next(iter(x["value"].values())) for x in span["attributes"]}
                        rows.append((int(span["startTimeUnixNano"]) / 1e9, int(a["gen_ai.usage.prompt_tokens"]),
                                     float(a["gen_ai.latency.time_in_model_prefill"]),
                                     float(a["gen_ai.latency.time_to_first_token"])))
    return sorted(rows)[:count]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("traces")
    ap.add_argument("--gpu", default="h100")
    ap.add_argument("--model", default="codellama/CodeLlama-34b-Instruct-hf")
    ap.add_argument("--prefix", type=int, default=1024, help="tokens every request after the first finds cached")
    ap.add_argument("--lone", type=int, default=40, help="requests of the synchronous stage")
    ap.add_argument("--guidellm", help="the run's GuideLLM report (JSON): also print the API server's share")
    args = ap.parse_args()
    composer = IterationComposer(kernel_source(args.gpu), load_architecture(args.model), tp=1, host=HOST)
    real, composed = [], []
    print("| prompt | cached | real ms | composed ms | ratio |\n|--:|--:|--:|--:|--:|")
    lone = lone_requests(args.traces, args.lone)
    for i, (_, prompt, prefill_s, _) in enumerate(lone):
        cached = 0 if i == 0 else args.prefix
        t = composer.time(IterationBatch(prefill_chunks=((cached, prompt - cached),)))
        print(f"| {prompt} | {cached} | {1e3 * prefill_s:.1f} | {1e3 * t:.1f} | {prefill_s / t:.3f} |")
        if i:
            real.append(1e3 * prefill_s)
            composed.append(1e3 * t)
    big = composer.breakdown(IterationBatch(prefill_chunks=((0, 4096),)))
    arch = composer.arch
    moved = arch.num_layers * 4096 * arch.elementwise_bytes_per_token_layer(1)
    print(f"\ncomposed 4,096-token prefill: {1e3 * big['total_s']:.1f} ms, of which GEMMs {1e3 * big['gemm_s']:.1f} ms "
          f"and element-wise traffic {1e3 * big['elementwise_s']:.1f} ms ({moved / 1e9:.1f} GB at "
          f"{moved / big['elementwise_s'] / 1e12:.2f} TB/s, the tables' one-token GEMM streaming bandwidth)")
    r, c = np.array(real), np.array(composed)
    slope, intercept = np.polyfit(c, r, 1)
    print(f"\n{len(r)} requests with the prefix cached: median real / composed {np.median(r / c):.4f}; "
          f"real = {intercept:.2f} ms + {slope:.3f} x composed (least squares)")
    if args.guidellm:
        front_end(lone, args.guidellm)


def front_end(lone: list[tuple[float, int, float, float]], report: str) -> None:
    """Client send -> engine arrival, and client TTFT - engine TTFT, of the lone requests (matched by time)."""
    with open(report, encoding="utf-8") as f:
        sent = sorted(((r["request_start_time"], r["prompt_tokens"], r["time_to_first_token_ms"] / 1e3)
                       for b in json.load(f)["benchmarks"] for r in b["requests"]["successful"]))
    to_engine, extra_ttft = [], []
    for arrival, prompt, _, ttft in lone:
        send, _, client_ttft = min(sent, key=lambda r: abs(r[0] - arrival) + (r[1] != prompt))
        to_engine.append(1e3 * (arrival - send))
        extra_ttft.append(1e3 * (client_ttft - ttft))
    print(f"API server, {len(lone)} lone requests: client send -> engine arrival median "
          f"{np.median(to_engine):.1f} ms (range {min(to_engine):.1f}-{max(to_engine):.1f}); client TTFT - "
          f"engine TTFT median {np.median(extra_ttft):.1f} ms")


if __name__ == "__main__":
    main()

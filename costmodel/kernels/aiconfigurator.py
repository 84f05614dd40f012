"""Kernel times from NVIDIA AIConfigurator's published vLLM measurements.

AIConfigurator (PyPI ``aiconfigurator-core``, Apache-2.0) ships, per GPU and
engine version, parquet tables of kernels timed inside vLLM: bf16 GEMMs by
(m, n, k), context and generation attention by batch, length and heads, and
vLLM's custom all-reduce by message size and GPU count. Only those tables are
read here; none of its modelling code is used.

Interpolation: GEMM time is linear in m between measured m, and log-linear
in n and k between the measured n and k around the question; attention time
is bilinear in (batch, length) and linear in the number of query heads
between measured head counts with the same KV heads and head size (KV
head counts that were not measured are split into groups that were:
heads are independent, so g times fewer heads over g times the batch is
the same work);
all-reduce time is log-linear in the message size. Anything outside the
measured ranges raises :class:`KernelDataError`.
"""

from __future__ import annotations

import bisect
import importlib.metadata
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl

from driftsim.costmodel.kernels.source import KernelDataError

PACKAGE = "aiconfigurator-core"
INSTALL_HINT = ("the measured kernel tables come from the optional package aiconfigurator-core; "
                "install it with `pip install 'driftsim[kernels]'` (or `pip install --no-deps aiconfigurator-core`)")
# driftsim's GPU names -> AIConfigurator's system folders
GPUS = {"a100": "a100_sxm", "h100": "h100_sxm", "h200": "h200_sxm", "l40s": "l40s"}
_ATTN_PREFERENCE = ("vllm_flash_attn_fa3", "vllm_flash_attn_fa2", "vllm_flash_attn")
_MS = 1e-3  # the tables' latencies are milliseconds


def data_root() -> Path:
    """Folder of the installed package's system tables, or a KernelDataError saying how to install it."""
    spec = importlib.util.find_spec("aiconfigurator_core")
    if spec is None or not spec.submodule_search_locations:
        raise KernelDataError(INSTALL_HINT)
    root = Path(list(spec.submodule_search_locations)[0]) / "systems" / "data"
    if not root.is_dir():
        raise KernelDataError(f"{root}: no systems/data folder in the installed aiconfigurator-core; {INSTALL_HINT}")
    return root


def _versions(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted((p.name for p in folder.iterdir() if p.is_dir()),
                  key=lambda v: tuple(int(x) if x.isdigit() else 0 for x in v.split(".")))


def covered_gpus() -> list[str]:
    """The GPUs with vLLM GEMM and attention tables in the installed package."""
    root = data_root()
    return sorted(g for g, folder in GPUS.items()
                  if _versions(root / folder / "gemm" / "vllm") and _versions(root / folder / "attention" / "vllm"))


class AIConfiguratorSource:
    """Measured vLLM kernel times of one GPU (see the module docstring)."""

    def __init__(self, gpu: str, *, engine_version: str | None = None) -> None:
        root = data_root()
        if gpu not in GPUS:
            raise KernelDataError(f"--gpu {gpu!r}: no measured tables; covered GPUs: {', '.join(sorted(GPUS))}")
        system = root / GPUS[gpu]
        versions = [v for v in _versions(system / "gemm" / "vllm") if v in _versions(system / "attention" / "vllm")]
        if not versions:
            raise KernelDataError(f"--gpu {gpu!r}: {system} has no vLLM GEMM and attention tables")
        if engine_version is None:
            engine_version = versions[-1]
        if engine_version not in versions:
            raise KernelDataError(f"--engine-version {engine_version!r}: {gpu} has vLLM tables for {', '.join(versions)}")
        comm = _versions(system / "comm" / "vllm")
        self.gpu, self.engine_version = gpu, engine_version
        self.comm_version = engine_version if engine_version in comm else (comm[-1] if comm else None)
        self._paths = {
            "gemm": system / "gemm" / "vllm" / engine_version / "gemm_perf.parquet",
            "context": system / "attention" / "vllm" / engine_version / "context_attention_perf.parquet",
            "generation": system / "attention" / "vllm" / engine_version / "generation_attention_perf.parquet",
        }
        if self.comm_version is not None:
            self._paths["allreduce"] = system / "comm" / "vllm" / self.comm_version / "custom_allreduce_perf.parquet"
        self._gemm = _gemm_grid(self._paths["gemm"])
        self._context = _attention_table(self._paths["context"], "isl")
        self._generation = _attention_table(self._paths["generation"], "step")
        self._kernels = {"gemm": self._gemm.kernel,
                         "context": self._context.kernel, "generation": self._generation.kernel}

    # ---- the KernelSource interface ------------------------------------
    def gemm_time(self, m: int, n: int, k: int) -> float:
        return self._gemm.time(m, n, k) * _MS

    def context_attention_time(self, batch, seq_len, num_heads, num_kv_heads, head_dim) -> float:
        return self._context.time(batch, seq_len, num_heads, num_kv_heads, head_dim) * _MS

    def generation_attention_time(self, batch, ctx_len, num_heads, num_kv_heads, head_dim) -> float:
        # the table's `step` is the number of tokens already cached before this one
        return self._generation.time(batch, ctx_len - 1, num_heads, num_kv_heads, head_dim) * _MS

    def allreduce_time(self, message_bytes: int, tp: int) -> float:
        if "allreduce" not in self._paths:
            raise KernelDataError(f"--tp {tp}: {self.gpu} has no vLLM all-reduce table")
        return _allreduce_time(self._paths["allreduce"], message_bytes, tp) * _MS

    def provenance(self) -> list[str]:
        version = importlib.metadata.version(PACKAGE)
        root = data_root()
        lines = []
        for what, path in self._paths.items():
            engine = self.comm_version if what == "allreduce" else self.engine_version
            kernel = self._kernels.get(what, "vLLM custom all-reduce (CUDA graph)")
            lines.append(f"{PACKAGE} {version} (Apache-2.0): systems/data/{path.relative_to(root)}; "
                         f"vLLM {engine}; {kernel}")
        return lines


class _GemmGrid:
    """Per measured (n, k): latency over m; interpolated as the module says."""

    def __init__(self, cells: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]], kernel: str) -> None:
        self.cells, self.kernel = cells, kernel
        self.ns = sorted({n for n, _ in cells})
        self.ks = sorted({k for _, k in cells})

    def time(self, m: int, n: int, k: int) -> float:
        n0, n1 = _bracket(self.ns, n, "GEMM n")
        k0, k1 = _bracket(self.ks, k, "GEMM k")
        logs = {}
        for nn in {n0, n1}:
            for kk in {k0, k1}:
                if (nn, kk) not in self.cells:
                    raise KernelDataError(f"GEMM (n={n}, k={k}): the table lacks the measured shape n={nn}, k={kk}")
                ms, lat = self.cells[(nn, kk)]
                if not ms[0] <= m <= ms[-1]:
                    raise KernelDataError(f"GEMM m={m}: outside the measured m range {ms[0]}..{ms[-1]}")
                logs[(nn, kk)] = np.log(np.interp(m, ms, lat))
        wn = _weight(n0, n1, n)
        wk = _weight(k0, k1, k)
        low = (1 - wk) * logs[(n0, k0)] + wk * logs[(n0, k1)]
        high = (1 - wk) * logs[(n1, k0)] + wk * logs[(n1, k1)]
        return float(np.exp((1 - wn) * low + wn * high))


def _weight(a: int, b: int, x: int) -> float:
    return 0.0 if a == b else (np.log(x) - np.log(a)) / (np.log(b) - np.log(a))


def _bracket(values: list[int], x: float, what: str) -> tuple[int, int]:
    if not values or not values[0] <= x <= values[-1]:
        span = f"{values[0]}..{values[-1]}" if values else "nothing"
        raise KernelDataError(f"{what}={x}: outside the measured range {span}")
    i = bisect.bisect_left(values, x)
    return (values[i], values[i]) if values[i] == x else (values[i - 1], values[i])


@lru_cache(maxsize=8)
def _gemm_grid(path: Path) -> _GemmGrid:
    raw = pl.read_parquet(path).filter(pl.col("gemm_dtype") == "bfloat16")
    kernel = ", ".join(sorted(raw["kernel_source"].unique().to_list())) + " (bf16)"
    table = (raw.group_by("m", "n", "k").agg(pl.col("latency").median()).sort("n", "k", "m"))
    cells = {}
    for (n, k), part in table.group_by("n", "k", maintain_order=True):
        cells[(int(n), int(k))] = (part["m"].to_numpy().astype(float), part["latency"].to_numpy())
    return _GemmGrid(cells, kernel)


class _AttentionTable:
    """Attention latency by (heads, kv heads, head size) -> bilinear over (batch, length)."""

    def __init__(self, table: pl.DataFrame, length: str, kernel: str) -> None:
        self.table, self.length, self.kernel = table, length, kernel
        self._grids: dict[tuple[int, int, int], tuple[list[int], list[int], np.ndarray]] = {}
        self._heads: dict[tuple[int, int], list[int]] = {}

    def _grid(self, heads: int, kv: int, hd: int) -> tuple[list[int], list[int], np.ndarray]:
        """(batches, lengths, latency[batch, length]) with NaN where nothing was measured."""
        key = (heads, kv, hd)
        if key not in self._grids:
            part = self.table.filter((pl.col("num_heads") == heads) & (pl.col("num_key_value_heads") == kv)
                                     & (pl.col("head_dim") == hd))
            wide = part.pivot(on=self.length, index="batch_size", values="latency",
                              aggregate_function="median").sort("batch_size")
            lengths = sorted(int(c) for c in wide.columns if c != "batch_size")
            values = wide.select([str(x) for x in lengths]).to_numpy().astype(float)
            self._grids[key] = (wide["batch_size"].to_list(), lengths, values)
        return self._grids[key]

    def _cell(self, heads: int, kv: int, hd: int, batch: float, length: float) -> float:
        batches, lengths, values = self._grid(heads, kv, hd)
        b0, b1 = _bracket(batches, batch, "attention batch")
        l0, l1 = _bracket(lengths, length, f"attention {self.length}")
        corners = values[np.ix_([batches.index(b0), batches.index(b1)], [lengths.index(l0), lengths.index(l1)])]
        if np.isnan(corners).any():
            raise KernelDataError(f"attention batch={batch}, {self.length}={length} ({heads} heads, {kv} KV heads): "
                                  f"not measured around this point (the table stops before batch {b1} x "
                                  f"{self.length} {l1})")
        wb = 0.0 if b0 == b1 else (batch - b0) / (b1 - b0)
        wl = 0.0 if l0 == l1 else (length - l0) / (l1 - l0)
        low = (1 - wl) * corners[0, 0] + wl * corners[0, 1]
        high = (1 - wl) * corners[1, 0] + wl * corners[1, 1]
        return float((1 - wb) * low + wb * high)

    def _head_values(self, kv: int, hd: int) -> list[int]:
        if (kv, hd) not in self._heads:
            have = self.table.filter((pl.col("num_key_value_heads") == kv) & (pl.col("head_dim") == hd))
            self._heads[(kv, hd)] = sorted(have["num_heads"].unique().to_list())
        return self._heads[(kv, hd)]

    def time(self, batch: int, length: int, heads: int, kv: int, hd: int) -> float:
        head_values = self._head_values(kv, hd)
        if not head_values:
            # Heads are independent: h query / kv KV heads over a batch of b is the same work as h/g and
            # kv/g heads over a batch of g*b. Use the smallest split g that lands on measured KV heads.
            for g in range(2, kv + 1):
                if kv % g == 0 and heads % g == 0 and self._head_values(kv // g, hd):
                    return self.time(batch * g, length, heads // g, kv // g, hd)
            covered = sorted(set(zip(self.table["num_key_value_heads"].to_list(), self.table["head_dim"].to_list())))
            raise KernelDataError(f"attention with {kv} KV heads per GPU and head size {hd}: not measured; "
                                  f"measured (KV heads, head size): {covered}")
        h0, h1 = _bracket(head_values, heads, f"attention query heads per GPU (with {kv} KV heads)")
        out = [self._cell(h, kv, hd, batch, length) for h in (h0, h1)]
        w = 0.0 if h0 == h1 else (heads - h0) / (h1 - h0)
        return (1 - w) * out[0] + w * out[1]


@lru_cache(maxsize=16)
def _attention_table(path: Path, length: str) -> _AttentionTable:
    table = pl.read_parquet(path).filter(pl.col("kv_cache_dtype") == "bfloat16")
    if "window_size" in table.columns:
        table = table.filter(pl.col("window_size") == 0)
    kernels = table["kernel_source"].unique().to_list()
    kernel = next((k for k in _ATTN_PREFERENCE if k in kernels), sorted(kernels)[0])
    return _AttentionTable(table.filter(pl.col("kernel_source") == kernel), length, kernel)


@lru_cache(maxsize=4096)
def _allreduce_time(path: Path, message_bytes: int, tp: int) -> float:
    table = _allreduce_table(path)
    gpus = sorted(table["num_gpus"].unique().to_list())
    part = table.filter(pl.col("num_gpus") == tp).sort("message_size")
    if part.is_empty():
        raise KernelDataError(f"--tp {tp}: all-reduce measured only for {', '.join(map(str, gpus))} GPUs")
    sizes = part["message_size"].to_numpy().astype(float)
    lat = part["latency"].to_numpy()
    if not sizes[0] <= message_bytes <= sizes[-1]:
        raise KernelDataError(f"all-reduce of {message_bytes} B: outside the measured sizes "
                              f"{sizes[0]:.0f}..{sizes[-1]:.0f} B")
    return float(np.exp(np.interp(np.log(message_bytes), np.log(sizes), np.log(lat))))


@lru_cache(maxsize=8)
def _allreduce_table(path: Path) -> pl.DataFrame:
    table = pl.read_parquet(path)
    if "vllm_graph" in table["backend"].unique().to_list():
        table = table.filter(pl.col("backend") == "vllm_graph")
    return table.group_by("num_gpus", "message_size").agg(pl.col("latency").median())

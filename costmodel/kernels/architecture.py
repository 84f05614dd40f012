"""Dense decoder shapes from a Hugging Face config.json, or a bundled name.

Only a dense decoder with full causal attention is composed; a config with
experts (MoE), latent attention (MLA) or sliding-window attention is refused
with the reason rather than approximated by a dense model.
"""

from __future__ import annotations

import json
from pathlib import Path

from driftsim.costmodel.hardware import ModelArch
from driftsim.costmodel.kernels.source import KernelDataError

# config.json fields of the bundled architectures (copied from each model's public config.json)
BUNDLED: dict[str, dict] = {
    "meta-llama/Llama-3.1-8B": dict(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32,
                                    num_key_value_heads=8, intermediate_size=14336, vocab_size=128256),
    "meta-llama/Llama-3.1-70B": dict(num_hidden_layers=80, hidden_size=8192, num_attention_heads=64,
                                     num_key_value_heads=8, intermediate_size=28672, vocab_size=128256),
    "Qwen/Qwen2.5-7B": dict(num_hidden_layers=28, hidden_size=3584, num_attention_heads=28, num_key_value_heads=4,
                            intermediate_size=18944, vocab_size=152064, model_type="qwen2",
                            sliding_window=131072, use_sliding_window=False),
    "Qwen/Qwen1.5-1.8B-Chat": dict(num_hidden_layers=24, hidden_size=2048, num_attention_heads=16,
                                   num_key_value_heads=16, intermediate_size=5504, vocab_size=151936,
                                   model_type="qwen2", sliding_window=32768, use_sliding_window=False),
    "mistralai/Mistral-7B-v0.3": dict(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32,
                                      num_key_value_heads=8, intermediate_size=14336, vocab_size=32768,
                                      sliding_window=None),
    "codellama/CodeLlama-34b-Instruct-hf": dict(num_hidden_layers=48, hidden_size=8192, num_attention_heads=64,
                                                num_key_value_heads=8, intermediate_size=22016, vocab_size=32000),
}
_QKV_BIAS_TYPES = ("qwen2",)
_REQUIRED = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")


def load_architecture(config: str) -> ModelArch:
    """The ModelArch of a bundled name or a config.json path (checked, dense only)."""
    if config in BUNDLED:
        return architecture_from_config(BUNDLED[config], name=config, where=f"--model {config}")
    path = Path(config)
    if not path.is_file():
        raise KernelDataError(f"--model {config!r}: neither a config.json file nor a bundled architecture "
                              f"({', '.join(sorted(BUNDLED))})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KernelDataError(f"{path}: not a JSON config.json: {exc}") from None
    if not isinstance(data, dict):
        raise KernelDataError(f"{path}: expected a JSON object (a Hugging Face config.json)")
    return architecture_from_config(data, name=str(data.get("_name_or_path") or path.parent.name), where=str(path))


def architecture_from_config(data: dict, *, name: str, where: str) -> ModelArch:
    """Refuse what the composer cannot model, then read the dense shapes."""
    _refuse_unsupported(data, where)
    for key in _REQUIRED:
        if not isinstance(data.get(key), int) or data[key] <= 0:
            raise KernelDataError(f"{where}: {key}: expected a positive integer, got {data.get(key)!r}")
    heads = data["num_attention_heads"]
    kv_heads = data.get("num_key_value_heads") or heads
    head_dim = data.get("head_dim")
    return ModelArch(name=name, num_layers=data["num_hidden_layers"], hidden_size=data["hidden_size"],
                     num_heads=heads, num_kv_heads=kv_heads, intermediate_size=data["intermediate_size"],
                     vocab_size=data["vocab_size"], dtype_bytes=2,
                     tied_embeddings=bool(data.get("tie_word_embeddings", False)),
                     qkv_bias=data.get("model_type") in _QKV_BIAS_TYPES or bool(data.get("attention_bias", False)),
                     head_dim_override=head_dim if isinstance(head_dim, int) and head_dim * heads != data["hidden_size"]
                     else None)


def _refuse_unsupported(data: dict, where: str) -> None:
    for key in ("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size"):
        if data.get(key):
            raise KernelDataError(f"{where}: {key}={data[key]!r}: a mixture-of-experts model; the composer "
                                  "models dense decoders only (expert GEMMs and routing are not composed)")
    if data.get("kv_lora_rank") or data.get("q_lora_rank"):
        raise KernelDataError(f"{where}: kv_lora_rank: multi-head latent attention (MLA); the composer models "
                              "standard multi-head / grouped-query attention only")
    window = data.get("sliding_window")
    if window and data.get("use_sliding_window", True) is not False:
        raise KernelDataError(f"{where}: sliding_window={window!r}: sliding-window attention; the composer models "
                              "full causal attention only")
    if data.get("layer_types") and any(t != "full_attention" for t in data["layer_types"]):
        raise KernelDataError(f"{where}: layer_types: layers other than full attention; the composer models "
                              "full causal attention in every layer only")

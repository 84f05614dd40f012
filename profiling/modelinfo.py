"""What a profile needs to know about the model: its architecture, read
from the Hugging Face ``config.json`` in the model folder (Llama, Qwen,
Mistral-style keys), in the ``[model]`` fields of a driftsim profile."""

from __future__ import annotations

import json
from pathlib import Path

DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "fp8": 1, "float8": 1}


def model_arch(model_dir: str | Path, *, dtype: str | None = None) -> dict:
    """``[model]`` fields from ``model_dir/config.json``; ``dtype_bytes``
    from ``dtype`` (the engine's) or the config's ``torch_dtype``/``dtype``.

    Raises FileNotFoundError / ValueError with the file named when the
    folder has no usable config.
    """
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json; pass the model folder the engine served")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    text = cfg.get("text_config", cfg)
    try:
        heads = int(text["num_attention_heads"])
        out = {
            "name": str(cfg.get("_name_or_path") or Path(model_dir).name),
            "num_layers": int(text["num_hidden_layers"]),
            "hidden_size": int(text["hidden_size"]),
            "num_heads": heads,
            "num_kv_heads": int(text.get("num_key_value_heads") or heads),
            "intermediate_size": int(text["intermediate_size"]),
            "vocab_size": int(text["vocab_size"]),
        }
    except KeyError as exc:
        raise ValueError(f"{path}: lacks {exc}; not a decoder config driftsim understands") from None
    name = str(dtype or text.get("torch_dtype") or text.get("dtype") or "bfloat16").replace("torch.", "")
    out["dtype_bytes"] = DTYPE_BYTES.get(name, 2)
    out["tied_embeddings"] = bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    out["qkv_bias"] = bool(text.get("attention_bias", False) or text.get("model_type") in ("qwen2",))
    head_dim = text.get("head_dim")
    if head_dim and int(head_dim) != out["hidden_size"] // heads:
        out["head_dim"] = int(head_dim)
    return out

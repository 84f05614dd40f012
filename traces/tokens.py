"""Counting the tokens of a prompt: a cheap whitespace proxy or a real local tokenizer.

Workload generators count the prompts they write (DriftSched's own split on
whitespace); the gateway's length estimator counts the prompts it receives.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol


class TokenCounter(Protocol):
    """Counts the tokens of a text."""

    def count(self, text: str) -> int: ...


class WhitespaceCounter:
    """The original's cheap proxy: ``len(text.split())`` (words, not tokens)."""

    name = "whitespace"

    def count(self, text: str) -> int:
        return len(text.split())


class TokenizerCounter:
    """A Hugging Face tokenizer loaded from a local file or directory; nothing is downloaded.

    Uses the ``tokenizers`` library when installed (a ``tokenizer.json`` file,
    or a directory holding one), else ``transformers.AutoTokenizer`` with
    ``local_files_only=True``. Counts like the original:
    ``len(encode(text, add_special_tokens=False))``.
    """

    name = "tokenizer"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"tokenizer path '{self.path}' does not exist (nothing is downloaded)")
        self._encode = self._load()

    def _load(self) -> Callable[[str], int]:
        json_file = self.path / "tokenizer.json" if self.path.is_dir() else self.path
        try:
            import tokenizers  # type: ignore[import-not-found]  # NOTE: optional, imported when a tokenizer is loaded
        except ImportError:
            tokenizers = None
        if tokenizers is not None and json_file.is_file():
            tok = tokenizers.Tokenizer.from_file(str(json_file))
            return lambda text: len(tok.encode(text, add_special_tokens=False).ids)
        try:
            import transformers  # type: ignore[import-not-found]  # NOTE: optional fallback
        except ImportError:
            transformers = None
        if transformers is not None:
            tok = transformers.AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            return lambda text: len(tok.encode(text, add_special_tokens=False))
        if tokenizers is not None:
            raise ImportError(
                f"cannot load tokenizer '{self.path}': 'tokenizers' needs a tokenizer.json there; "
                "otherwise install 'transformers'"
            )
        raise ImportError(
            f"cannot load tokenizer '{self.path}': install 'tokenizers' (needs a tokenizer.json) "
            "or 'transformers'; neither is available"
        )

    def count(self, text: str) -> int:
        return self._encode(text)

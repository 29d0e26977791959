"""The demo model's word-level tokenizer, exportable as a Hugging Face ``tokenizer.json``.

Words are maximal runs of word characters, punctuation runs are tokens of their
own, and a newline is the token ``Ċ`` (a word character, so it survives the
split). This is exactly the Hugging Face ``Whitespace`` pre-tokenizer behind a
``Replace("\\n", " Ċ ")`` normaliser, which is what makes the export faithful:
the gateway's black-box watermark loads the export with the real ``tokenizers``
library and gets the same ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["NEWLINE", "UNK", "BOS", "EOS", "WordTokenizer", "split_words"]

NEWLINE = "Ċ"
UNK, BOS, EOS = "<unk>", "<s>", "</s>"
_PIECES = re.compile(r"\w+|[^\w\s]+")
_NO_SPACE_BEFORE = re.compile(r"^[.,;:!?%)\]}'’]")
_NO_SPACE_AFTER = {"(", "[", "{", "$", "#", "'", '"', "“"}


def split_words(text: str) -> list[str]:
    return _PIECES.findall(text.replace("\r\n", "\n").replace("\n", f" {NEWLINE} "))


class WordTokenizer:
    """Maps pieces to ids; id 0 is ``<unk>``, 1 ``<s>``, 2 ``</s>``."""

    def __init__(self, vocab: Sequence[str]) -> None:
        self.id_to_token = list(vocab)
        self.token_to_id = {t: i for i, t in enumerate(self.id_to_token)}
        self.unk_id = self.token_to_id[UNK]
        self.bos_id = self.token_to_id[BOS]
        self.eos_id = self.token_to_id[EOS]

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 2) -> WordTokenizer:
        counts: dict[str, int] = {}
        for text in texts:
            for piece in split_words(text):
                counts[piece] = counts.get(piece, 0) + 1
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls([UNK, BOS, EOS, *words])

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)

    def encode(self, text: str) -> list[int]:
        get, unk = self.token_to_id.get, self.unk_id
        return [get(piece, unk) for piece in split_words(text)]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.decode_pieces(ids))

    def decode_pieces(self, ids: Iterable[int]) -> list[str]:
        """The text each token adds, one string per id ("" for BOS/EOS): ``"".join`` of a prefix is the prefix's decode.

        Streaming uses this to emit token by token in one pass, instead of
        decoding every prefix (quadratic in the answer's length).
        """
        out: list[str] = []
        previous = NEWLINE
        for i in ids:
            token = self.id_to_token[i] if 0 <= i < len(self.id_to_token) else UNK
            if token in (BOS, EOS):
                out.append("")
                continue
            if token == NEWLINE:
                out.append("\n")
            elif previous == NEWLINE or previous in _NO_SPACE_AFTER or _NO_SPACE_BEFORE.match(token):
                out.append(token)
            else:
                out.append(" " + token)
            previous = token
        return out

    def token_text(self, i: int) -> str:
        """How one token reads on its own (for logprobs output)."""
        token = self.id_to_token[i] if 0 <= i < len(self.id_to_token) else UNK
        return "\n" if token == NEWLINE else token

    def to_hf_json(self) -> str:
        """A ``tokenizers``-loadable ``tokenizer.json`` with the same vocabulary and splitting."""
        spec = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {"id": self.token_to_id[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True}
                for t in (UNK, BOS, EOS)
            ],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Replace", "pattern": {"String": "\r\n"}, "content": "\n"},
                {"type": "Replace", "pattern": {"String": "\n"}, "content": f" {NEWLINE} "},
            ]},
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": None,
            "decoder": None,
            "model": {"type": "WordLevel", "vocab": self.token_to_id, "unk_token": UNK},
        }
        return json.dumps(spec, ensure_ascii=False)

    def save_hf(self, path: str | Path) -> Path:
        target = Path(path)
        target.write_text(self.to_hf_json(), encoding="utf-8")
        return target

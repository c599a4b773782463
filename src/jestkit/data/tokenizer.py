"""A word vocabulary for captions: lowercase words, punctuation and digits as their own tokens.

Tokenizing: text is lowercased; a token is a word of letters (hyphenated words such as
"t-shirt" or "top-heavy" stay one token), a single digit (so random numbers in web junk do not
grow the vocabulary), or a single other non-space character (punctuation). The same rule runs on
captions and on class prompts, so "t-shirt" and "ankle boot" tokenize the same in both.
Ids 0 and 1 are the specials `<pad>` and `<unk>`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import torch

PAD, UNK = 0, 1
SPECIALS = ("<pad>", "<unk>")
_TOKEN = re.compile(r"[a-z]+(?:-[a-z]+)*|\d|[^\sa-z\d]")


def tokenize(text: str) -> list[str]:
    """The tokens of `text`: lowercase words (hyphens kept inside), digits, punctuation marks."""
    return _TOKEN.findall(text.lower())


class Vocab:
    """Maps tokens to ids; `words[i]` is the token with id i, specials first."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary's first words must be {SPECIALS}, got {words[:2]}")
        if len(set(words)) != len(words):
            raise ValueError("a vocabulary's words must be unique")
        self.words = words
        self._ids = {w: i for i, w in enumerate(words)}

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1, max_size: int | None = None) -> Vocab:
        """Vocabulary of the tokens seen at least `min_count` times, most frequent first (ties
        alphabetical, so the same texts always give the same ids), at most `max_size` ids."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        if max_size is not None and max_size < len(SPECIALS):
            raise ValueError(f"max_size must be >= {len(SPECIALS)}, got {max_size}")
        counts = Counter(tok for text in texts for tok in tokenize(text))
        for special in SPECIALS:
            counts.pop(special, None)
        kept = sorted(
            (w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w)
        )
        if max_size is not None:
            kept = kept[: max_size - len(SPECIALS)]
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, token: str) -> bool:
        return token in self._ids

    def token_ids(self, text: str) -> list[int]:
        """Ids of the tokens of `text`, unknown tokens as UNK, not padded or truncated."""
        return [self._ids.get(tok, UNK) for tok in tokenize(text)]

    def encode(self, texts: Sequence[str], max_len: int = 16) -> torch.Tensor:
        """(len(texts), max_len) int64 ids: truncated to max_len, padded with PAD (0)."""
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings, not one string")
        rows = [self.token_ids(text)[:max_len] for text in texts]
        rows = [ids + [PAD] * (max_len - len(ids)) for ids in rows]
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), max_len)

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Tokens of each row of `ids` joined by single spaces, padding dropped."""
        if ids.dim() == 1:
            ids = ids[None]
        return [" ".join(self.words[i] for i in row if i != PAD) for row in ids.tolist()]

    def state_dict(self) -> dict[str, list[str]]:
        """A plain, JSON-serialisable dict: {"words": [...]}."""
        return {"words": list(self.words)}

    @classmethod
    def from_state_dict(cls, state: dict) -> Vocab:
        return cls(state["words"])

    def fingerprint(self) -> str:
        """sha256 hex digest of the word list (ids included, since order is hashed)."""
        return hashlib.sha256(json.dumps(self.words).encode("utf-8")).hexdigest()

"""BPE patches: token boundaries of a byte-level BPE tokenizer (the `tokenizers` library).

A baseline for compression tables, not a patcher to train with: where a token
ends depends on the bytes after it, so it is not causal (`causal = False`);
ByteLM refuses it and `start`/`step` raise.

Bytes, not text. Each byte is mapped to one printable character (GPT-2's
byte-to-unicode table) before the tokenizer sees it, so any byte string,
invalid UTF-8 included, tokenizes, and every token is exactly as many bytes as
it has characters: the boundaries map back to byte positions by construction.
The pre-tokenizer is GPT-2's split (words with their leading space, numbers,
punctuation runs, whitespace) written over the mapped characters; bytes >= 0x80
count as letters, so multi-byte characters stay inside words. BOS and EOS are
patches of their own, as special tokens are in a token-based model.

The tokenizer is trained on (a sample of) the training split and cached as
JSON next to the byte cache: `<corpus>/bpe/bpe-<vocab>-<sample>.json`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bytelm.patchers.base import PatcherState, ends_to_lengths
from bytelm.vocab import PAD


def _byte_to_char() -> list[str]:
    """GPT-2's table: printable latin-1 bytes map to themselves, the rest to U+0100 and up."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


B2C = _byte_to_char()
_TRANSLATE = str.maketrans({chr(b): c for b, c in enumerate(B2C)})


def to_chars(data: bytes) -> str:
    """Bytes -> one character per byte."""
    return data.decode("latin-1").translate(_TRANSLATE)


def _pattern() -> str:
    """GPT-2's pre-tokenizer regex, over mapped characters."""
    esc = lambda bs: "".join("\\" + B2C[b] if B2C[b] in r"\]^-[" else B2C[b] for b in bs)
    space = esc([ord(" ")])
    ws = esc(b" \t\n\r\x0b\x0c")
    letters = "A-Za-z" + esc(range(0x80, 0x100))
    digits = "0-9"
    return (
        f"{space}?[{letters}]+|{space}?[{digits}]+|{space}?[^{letters}{digits}{ws}]+"
        f"|[{ws}]+(?![^{ws}])|[{ws}]+"
    )


def train_tokenizer(docs, vocab_size: int):
    """Train a byte-level BPE on an iterable of `bytes` documents -> tokenizers.Tokenizer."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_pattern()), behavior="isolated")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=B2C, show_progress=False, special_tokens=[]
    )
    tok.train_from_iterator((to_chars(d) for d in docs), trainer=trainer)
    return tok


def parse_vocab(spec: str) -> int:
    """'8k' -> 8192, '32000' -> 32000."""
    s = spec.strip().lower()
    return int(float(s[:-1]) * 1024) if s.endswith("k") else int(s)


class BPEPatcher:
    """Patch boundaries = BPE token boundaries. Not causal; for measuring compression only."""

    name = "bpe"
    causal = False

    def __init__(self, tokenizer=None, max_patch_len: int = 1 << 30, vocab_size: int = 0):
        self.tokenizer = tokenizer
        self.max_patch_len = max_patch_len  # tokens are never split; kept for the protocol
        self.vocab_size = vocab_size

    @classmethod
    def from_config(cls, cfg) -> BPEPatcher:
        """An untrained patcher: `for_corpus` trains (or loads) its tokenizer."""
        return cls(None, cfg.max_patch_len, cfg.vocab_size)

    @classmethod
    def for_corpus(cls, train_split, vocab_size: int, sample_bytes: int = 8 << 20) -> BPEPatcher:
        """Train a tokenizer on the first `sample_bytes` of a training split, or load the cached one."""
        from tokenizers import Tokenizer

        path = Path(train_split.path) / "bpe" / f"bpe-{vocab_size}-{sample_bytes}.json"
        if path.is_file():
            return cls(Tokenizer.from_file(str(path)), vocab_size=vocab_size)

        def docs():
            seen = 0
            for i in range(train_split.n_docs):
                d = train_split.doc(i)[: sample_bytes - seen]
                yield d
                seen += len(d)
                if seen >= sample_bytes:
                    return

        tok = train_tokenizer(docs(), vocab_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{np.random.randint(1 << 30)}")
        tok.save(str(tmp))
        tmp.replace(path)  # atomic: concurrent runs never read a half-written file
        return cls(tok, vocab_size=vocab_size)

    def _require(self):
        if self.tokenizer is None:
            raise ValueError(
                "bytelm: the bpe patcher has no tokenizer; build it with "
                "BPEPatcher.for_corpus(train_split, vocab_size)"
            )

    def token_lengths(self, data: bytes) -> list[int]:
        """Bytes -> the byte length of each token."""
        self._require()
        if not data:
            return []
        return [len(t) for t in self.tokenizer.encode(to_chars(data)).tokens]

    def ends(self, byte_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T) bool: byte t is the last byte of a token (or a special)."""
        self._require()
        out = torch.zeros(byte_ids.shape, dtype=torch.bool)
        rows = byte_ids.cpu().numpy()
        runs, where = [], []
        for b, row in enumerate(rows):
            special = row >= 256
            out[b, torch.from_numpy(special & (row != PAD))] = True  # BOS/EOS: own patches
            # maximal runs of raw bytes, tokenized independently (a special ends a run)
            edges = np.flatnonzero(np.diff(np.concatenate([[1], special, [1]]).astype(np.int8)))
            for s, e in zip(edges[::2], edges[1::2]):
                runs.append(to_chars(bytes(row[s:e].astype(np.uint8))))
                where.append((b, s))
        for (b, s), enc in zip(where, self.tokenizer.encode_batch(runs) if runs else []):
            pos = s + np.cumsum([len(t) for t in enc.tokens]) - 1
            out[b, torch.from_numpy(pos)] = True
        return out.to(byte_ids.device)

    def patch(self, byte_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) -> patch_lengths (B, P)."""
        n = (byte_ids != PAD).sum(-1)
        return ends_to_lengths(self.ends(byte_ids), n)

    def start(self, batch: int, device=None) -> PatcherState:
        raise ValueError(
            "bytelm: the bpe patcher is not causal (a token's end depends on later bytes), so it "
            "cannot patch incrementally; use it to measure compression only"
        )

    def step(self, state, new_ids, n_valid=None):
        return self.start(0)

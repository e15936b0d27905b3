"""IRRA's text tokenizer: CLIP byte-level BPE with IRRA's special tokens, written anew.

Behaviour (SPEC §1.6, fixture ``tokenizer_cases.json``):

* cleaning: ``ftfy.fix_text``, ``html.unescape`` twice, strip, collapse every whitespace run to one
  space, strip, lower-case;
* pre-tokenisation by CLIP's regex (special strings, contractions, letter runs, single digits, runs
  of other non-space characters), each piece mapped byte-wise to the byte-unicode alphabet and
  BPE-merged with the merges file that ships in ``open_clip`` (not vendored here);
* vocabulary: 256 bytes, the same with ``</w>``, the merges 1..48894, **last entry removed**, then
  ``<|mask|>`` = 49405, ``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407;
* :func:`tokenize`: ``[SOT] + bpe + [EOT]``, truncated to ``context_length`` keeping EOT last,
  zero-padded (0 is also the id of the non-final ``!`` byte, as in IRRA).
"""
from __future__ import annotations

import functools
import gzip
import html
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    import torch

import ftfy
import regex

MASK_TOKEN, SOT_TOKEN, EOT_TOKEN = "<|mask|>", "<|startoftext|>", "<|endoftext|>"
MASK_ID, SOT_ID, EOT_ID = 49405, 49406, 49407
VOCAB_SIZE = 49408
# merges used by CLIP: lines 1 .. 49152 - 256 - 2 of the file (line 0 is a version header)
_NUM_MERGES = 49152 - 256 - 2

_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|mask\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def default_bpe_path() -> Path:
    """The CLIP merges file shipped by ``open_clip_torch`` (``open_clip/bpe_simple_vocab_16e6.txt.gz``)."""
    import importlib.util

    # locate the package without importing it (importing open_clip pulls in timm and takes seconds)
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the tokenizer needs the BPE merges shipped by open_clip_torch; "
                          "install it with `pip install open_clip_torch`")
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the open_clip_torch installation; reinstall it")
    return path


def _byte_alphabet() -> dict[int, str]:
    """Map every byte to a printable unicode character (GPT-2/CLIP convention), so BPE never sees
    whitespace or control characters: printable Latin-1 bytes map to themselves, the rest to 256+."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    extra = 0
    for byte in range(256):
        if byte not in keep:
            keep.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


def clean_text(text: str) -> str:
    """IRRA/CLIP cleaning: ftfy, double HTML unescape, whitespace collapse, lower-case."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


class SimpleTokenizer:
    """CLIP BPE tokenizer with IRRA's vocabulary (size 49408, mask/SOT/EOT = 49405/49406/49407)."""

    def __init__(self, bpe_path: str | Path | None = None) -> None:
        path = Path(bpe_path) if bpe_path else default_bpe_path()
        lines = gzip.open(path).read().decode("utf-8").split("\n")[1:_NUM_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        self.byte_encoder = _byte_alphabet()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(pair) for pair in merges]
        vocab.pop(-1)  # IRRA drops the last merge's symbol to make room for <|mask|>
        vocab += [MASK_TOKEN, SOT_TOKEN, EOT_TOKEN]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.bpe_ranks = {pair: i for i, pair in enumerate(merges)}
        self._special = {MASK_TOKEN, SOT_TOKEN, EOT_TOKEN}
        self._bpe_cache: dict[str, tuple[str, ...]] = {}

    def bpe(self, token: str) -> tuple[str, ...]:
        """Merge the byte-symbols of one pre-token; the last symbol carries ``</w>``."""
        cached = self._bpe_cache.get(token)
        if cached is not None:
            return cached
        if token in self._special:
            return (token,)
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word[:-1], word[1:]))
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self._bpe_cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Cleaned, BPE-encoded ids of ``text`` without SOT/EOT."""
        ids: list[int] = []
        for piece in _PATTERN.findall(clean_text(text)):
            if piece in self._special:
                ids.append(self.encoder[piece])
                continue
            symbols = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            for sym in self.bpe(symbols):
                # the one merge IRRA popped from the vocabulary has no id; fall back to its halves
                if sym in self.encoder:
                    ids.append(self.encoder[sym])
                else:  # pragma: no cover - needs the single rarest merge of the file
                    ids.extend(self.encoder[s] for s in _split_unknown(sym, self.encoder))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Inverse of :meth:`encode` up to cleaning (padding 0 is decoded as ``!`` like CLIP)."""
        text = "".join(self.decoder[int(i)] for i in ids)
        # "</w>" is made of printable byte-symbols, so it survives the byte mapping and is replaced after
        data = bytearray(self.byte_decoder[c] for c in text if c in self.byte_decoder)
        return data.decode("utf-8", errors="replace").replace("</w>", " ")


def _split_unknown(sym: str, encoder: dict[str, int]) -> list[str]:
    """Greedy longest-prefix split of a symbol missing from the vocabulary."""
    out, i = [], 0
    while i < len(sym):
        for j in range(len(sym), i, -1):
            if sym[i:j] in encoder:
                out.append(sym[i:j])
                i = j
                break
        else:
            raise KeyError(sym)
    return out


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> SimpleTokenizer:
    """The shared tokenizer instance (the merges file is read once per process)."""
    return SimpleTokenizer()


@functools.lru_cache(maxsize=200_000)
def _encode_cached(text: str) -> tuple[int, ...]:
    return tuple(get_tokenizer().encode(text))


def token_length(text: str) -> int:
    """Untruncated length of ``[SOT] + bpe(text) + [EOT]``."""
    return len(_encode_cached(text)) + 2


def tokenize(texts: str | Sequence[str], context_length: int = 77) -> "torch.Tensor":
    """Tokenise captions exactly as IRRA (``truncate=True``).

    Args:
        texts: one caption or a sequence of N captions.
        context_length: L, the number of ids per caption.

    Returns:
        LongTensor (N, L): ``[SOT] + bpe + [EOT]`` truncated to L with EOT kept at position L-1,
        zero-padded. Repeated captions are encoded once (cached).
    """
    import torch

    if isinstance(texts, str):
        texts = [texts]
    if context_length < 2:
        raise ValueError(f"context_length must be >= 2 (SOT and EOT), got {context_length}")
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"tokenize: caption {row} is {type(text).__name__}, expected str")
        ids = [SOT_ID, *_encode_cached(text), EOT_ID]
        if len(ids) > context_length:
            ids = ids[:context_length]
            ids[-1] = EOT_ID
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out

"""IRRA's masked-language-model inputs (SPEC §1.7), without its in-place bug.

Candidates are positions with ``0 < id < MASK_ID`` (not padding, mask, SOT or EOT). Each is selected
with probability 0.15; a selected token becomes ``<|mask|>`` (80 %), a random id in
``[1, MASK_ID - 1]`` (10 %) or stays (10 %); its label is the original id, every other label is 0
(ignored by the loss). If nothing was selected, position 1 is forced (as IRRA).

IRRA builds the masked ids on a NumPy view of the caption tensor, so its ``caption_ids`` come back
masked too (IRRA#13). :func:`mask_tokens` never touches its input; the dataset reproduces the bug
only under ``cfg.data.mlm_shared_caption_bug``.
"""
from __future__ import annotations

import numpy as np
import torch

from irra_core.data.tokenizer import MASK_ID

MASK_PROB = 0.15


def mask_tokens(tokens: torch.Tensor, rng: np.random.Generator, mask_prob: float = MASK_PROB
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw IRRA's MLM corruption for one caption.

    Args:
        tokens: LongTensor (L,), a tokenised caption (left unchanged).
        rng: the random source (seed it per sample for worker-independent masks).
        mask_prob: selection probability per candidate token.

    Returns:
        ``(mlm_ids, mlm_labels)``, LongTensors (L,): corrupted ids; original id at selected
        positions and 0 elsewhere.
    """
    ids = tokens.numpy().copy()  # a copy: the caller's caption must stay clean
    length = ids.shape[0]
    u = rng.random(length)
    candidate = (ids > 0) & (ids < MASK_ID)
    selected = candidate & (u < mask_prob)
    labels = np.where(selected, ids, 0)
    v = u / mask_prob  # IRRA rescales the same draw to pick the corruption type
    to_mask = selected & (v < 0.8)
    to_random = selected & (v >= 0.8) & (v < 0.9)
    randoms = rng.integers(1, MASK_ID, length)
    ids = np.where(to_mask, MASK_ID, np.where(to_random, randoms, ids))
    if not selected.any() and length > 1:
        labels[1] = tokens[1].item()
        ids[1] = MASK_ID
    return torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(labels.astype(np.int64))

"""MLM masking (SPEC §1.7): statistics, clean captions by default, IRRA's in-place bug by switch."""
from __future__ import annotations

import numpy as np
import torch

from irra_core.data.datasets import TrainDataset
from irra_core.data.mlm import mask_tokens
from irra_core.data.tokenizer import EOT_ID, MASK_ID, SOT_ID, tokenize


def test_mask_statistics_and_input_untouched():
    tokens = tokenize(" ".join(["word"] * 70), 77)[0]
    before = tokens.clone()
    rng = np.random.default_rng(0)
    sel = masked = rand = kept = 0
    for _ in range(300):
        ids, labels = mask_tokens(tokens, rng)
        chosen = labels != 0
        sel += chosen.sum().item()
        masked += (ids[chosen] == MASK_ID).sum().item()
        kept += (ids[chosen] == tokens[chosen]).sum().item()
        rand += ((ids[chosen] != MASK_ID) & (ids[chosen] != tokens[chosen])).sum().item()
        assert (ids[~chosen] == tokens[~chosen]).all()
        assert (labels[chosen] == tokens[chosen]).all()
        assert ids[0] == SOT_ID and EOT_ID in ids.tolist()  # specials never candidates
    assert torch.equal(tokens, before)
    assert abs(sel / (300 * 70) - 0.15) < 0.01
    assert abs(masked / sel - 0.8) < 0.03 and abs(rand / sel - 0.1) < 0.03 and abs(kept / sel - 0.1) < 0.03


def test_nothing_selected_forces_position_one():
    tokens = tokenize("a", 8)[0]

    class NeverRng:
        def random(self, n):
            return np.ones(n)

        def integers(self, lo, hi, n):
            return np.full(n, lo)

    ids, labels = mask_tokens(tokens, NeverRng())  # type: ignore[arg-type]
    assert ids[1] == MASK_ID and labels[1] == tokens[1] and (labels[2:] == 0).all()


def _dataset(tmp_path, bug):
    from PIL import Image

    path = tmp_path / "img.jpg"
    Image.new("RGB", (16, 32), (120, 10, 10)).save(path)
    samples = [(0, 0, str(path), "a man in a red jacket with black trousers and white shoes")] * 4
    tf = lambda im: torch.zeros(3, 4, 4)  # noqa: E731
    return TrainDataset(samples, tf, 24, mlm=True, mlm_shared_caption_bug=bug, seed=7)


def test_switch_off_caption_ids_clean_switch_on_equal_mlm_ids(tmp_path):
    clean = tokenize("a man in a red jacket with black trousers and white shoes", 24)[0]
    off, on = _dataset(tmp_path, False), _dataset(tmp_path, True)
    for i in range(4):
        a, b = off[(i, 0)], on[(i, 0)]
        assert torch.equal(a["caption_ids"], clean) and not torch.equal(a["mlm_ids"], clean)
        assert torch.equal(b["caption_ids"], b["mlm_ids"])
        assert torch.equal(a["mlm_ids"], b["mlm_ids"])  # same seed, same mask
    assert torch.equal(off.caption_ids[0], clean)  # the stored captions are never modified


def test_masks_depend_on_seed_epoch_index_only(tmp_path):
    ds = _dataset(tmp_path, False)
    assert torch.equal(ds[(1, 3)]["mlm_ids"], ds[(1, 3)]["mlm_ids"])
    draws = {tuple(ds[(i, e)]["mlm_ids"].tolist()) for i in range(4) for e in range(3)}
    assert len(draws) > 6

"""``model.mlm_vocab: train``: IRRA's MLM softmax over the tokens of the training captions (a CPU deviation)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from irra_core import losses
from irra_core.checkpoint import load_checkpoint
from irra_core.config import ConfigError, load_config
from irra_core.engine import fit
from irra_core.model import build_model


pytestmark = pytest.mark.usefixtures("one_thread")


def make_batch(cfg, batch_size: int = 4, seed: int = 0) -> dict:
    """Captions drawn from a small word set (as a dataset's are), one masked token each."""
    gen = torch.Generator().manual_seed(seed)
    height, width = cfg.data.img_size
    words = torch.randint(1, 49405, (12,), generator=gen)
    ids = torch.zeros(batch_size, cfg.data.text_length, dtype=torch.long)
    labels = torch.zeros_like(ids)
    for i in range(batch_size):
        n = 4 + i
        ids[i, 0], ids[i, n] = 49406, 49407  # SOT ... EOT
        ids[i, 1:n] = words[torch.randint(0, len(words), (n - 1,), generator=gen)]
        labels[i, 1 + i % (n - 1)] = ids[i, 1 + i % (n - 1)]
    mlm_ids = torch.where(labels > 0, torch.full_like(ids, 49405), ids)
    return {"images": torch.randn(batch_size, 3, height, width, generator=gen), "caption_ids": ids,
            "pids": torch.arange(batch_size) // 2, "mlm_ids": mlm_ids, "mlm_labels": labels}


def _model(**overrides):
    cfg = load_config("irra-cpu", overrides, smoke=True)
    torch.manual_seed(0)
    return cfg, build_model(cfg, num_classes=8).eval()


def _branch_inputs(model, batch):
    image_tokens = model.base_model.encode_image(batch["images"])
    return batch["mlm_ids"], batch["mlm_labels"], image_tokens


def test_restricted_scores_are_the_full_heads_columns():
    cfg, model = _model()
    batch = make_batch(cfg, batch_size=6)
    with torch.no_grad():
        full_scores, full_labels = model.mlm_scores(*_branch_inputs(model, batch))
        size = model.restrict_mlm_vocabulary(batch["caption_ids"])
        scores, labels = model.mlm_scores(*_branch_inputs(model, batch))
    vocab = model.mlm_vocab
    assert size == vocab.numel() == len(set(batch["caption_ids"].flatten().tolist()) | {0})
    assert torch.equal(vocab, torch.sort(vocab).values) and int(vocab[0]) == 0  # restricted label 0 = ignored
    assert int(labels.min()) > 0
    assert scores.shape == (full_scores.shape[0], size)
    torch.testing.assert_close(scores, full_scores[:, vocab], rtol=1e-5, atol=1e-5)
    assert torch.equal(vocab[labels], full_labels)
    # the loss is the cross-entropy over the restricted columns: the full loss minus the dropped normaliser mass
    restricted = losses.compute_mlm(scores, labels)
    by_hand = F.cross_entropy(full_scores[:, vocab], torch.searchsorted(vocab, full_labels))
    torch.testing.assert_close(restricted, by_hand)
    assert restricted < losses.compute_mlm(full_scores, full_labels)


def test_a_label_outside_the_vocabulary_is_an_error_and_none_restores_the_full_head():
    cfg, model = _model()
    batch = make_batch(cfg, batch_size=4)
    model.restrict_mlm_vocabulary(torch.tensor([[49406, 49407]]))  # SOT and EOT only: every label is missing
    with pytest.raises(ValueError, match="not in the restricted MLM vocabulary"):
        model.mlm_scores(*_branch_inputs(model, batch))
    assert model.restrict_mlm_vocabulary(None) == model.mlm_head.fc.out_features
    scores, _ = model.mlm_scores(*_branch_inputs(model, batch))
    assert scores.shape[1] == model.mlm_head.fc.out_features


def test_restriction_leaves_the_checkpoint_layout_unchanged():
    cfg, model = _model()
    before = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.restrict_mlm_vocabulary(make_batch(cfg)["caption_ids"])
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == before


def test_unknown_value_is_refused():
    with pytest.raises(ConfigError, match="model.mlm_vocab"):
        load_config("irra-cpu", {"model.mlm_vocab": "some"})


def test_fit_restricts_to_the_training_captions(tmp_path, capsys):
    cfg = load_config("irra-cpu", {"data.root": str(tmp_path / "data"), "train.progress": "none",
                                   "data.synthetic_identities": 10, "data.batch_size": 8, "train.max_steps": 2,
                                   "model.mlm_vocab": "train"}, smoke=True)
    fit(cfg, tmp_path / "run")
    out = capsys.readouterr().out
    assert "MLM softmax over the" in out and "tokens of the training captions" in out
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    assert state["mlm_head.fc.weight"].shape[0] == cfg.model.vocab_size and "mlm_vocab" not in state

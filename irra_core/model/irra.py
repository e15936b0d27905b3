"""IRRA's model: CLIP + ID classifier + implicit relation reasoning (PHP extends it in :mod:`.php`).

Written anew from SPEC §1.9. Attribute names are IRRA's (``base_model``, ``classifier``, ``cross_attn``,
``cross_modal_transformer``, ``ln_pre_t``, ``ln_pre_i``, ``ln_post``, ``mlm_head.{dense,gelu,ln,fc}``), so
its checkpoints load directly.

Global features: image = CLS token, text = token at ``argmax(ids)`` (EOT). ``forward(batch)`` returns
features and logits; :func:`irra_core.losses.total_loss` turns them into the weighted loss terms.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from irra_core import losses
from irra_core.config import Config
from irra_core.model import fast
from irra_core.model.clip import CLIP, Attention, CLIPConfig, LayerNorm, QuickGELU, Transformer, init_transformer_like_clip

__all__ = ["IRRA", "text_global_index"]


def text_global_index(caption_ids: torch.Tensor) -> torch.Tensor:
    """(B,) position of the EOT token of each caption: ``argmax(ids)`` (EOT 49407 is the largest id)."""
    return caption_ids.argmax(dim=-1)


class IRRA(nn.Module):
    """IRRA, heads chosen by ``cfg.loss.names``. Feature methods return ``(global, tokens, routing)``; routing is
    ``[]`` here and PHP's per-layer expert routing in :class:`irra_core.model.php.PHP`.

    Args:
        cfg: the run configuration (``cfg.model``: architecture and switches; ``cfg.loss``: names, weights).
        clip_config: tower sizes (from ``cfg.model`` or inferred from a state dict).
        num_classes: identities of the training split (the ID classifier's outputs; unused without ``id``).
    """

    #: DistributedDataParallel must look for parameters without a gradient (PHP: top-k routing can leave an
    #: expert without tokens in a batch)
    find_unused_parameters = False

    def __init__(self, cfg: Config, clip_config: CLIPConfig, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.loss_names = cfg.loss_names()
        self.logit_scale = 1.0 / cfg.model.temperature  # a constant, as in IRRA (CLIP's learnable one is off)
        self.base_model = CLIP(clip_config)
        self.embed_dim = dim = clip_config.embed_dim
        #: encode captions only up to the batch's longest caption: exact (the text tower is causal and the
        #: global feature is the EOT token), ~2x less text compute for CUHK-like captions padded to 77.
        #: For PHP with CRFM masking the padding, each caption runs packed on its own tokens (positions after
        #: EOT are returned as zeros, which CRFM gives zero weight). Not applied where padding matters (CRFM
        #: attending padding; the MLM branch, whose cross-modal transformer is bidirectional) nor inside
        #: capture_attention (maps keep the full length L).
        self.trim_text_padding = True
        #: where only the global token of a tower is used (IRRA's image tower without MLM, IRRA's text tower
        #: for the global features), compute only what that token depends on: the last block at that token
        #: alone (~20% fewer tower FLOPs at 4 layers) and, in the causal text tower, the earlier blocks on each
        #: caption's own tokens (packed; padding costs nothing). Exact up to float summation order. PHP's CRFM
        #: reads every token, so PHP never takes this path.
        self.prune_to_global_token = True
        heads = max(1, dim // 64)  # IRRA: embed_dim // 64 heads for the cross-modal modules

        if "id" in self.loss_names:
            if num_classes < 1:
                raise ValueError(f"the 'id' loss needs num_classes >= 1, got {num_classes}")
            self.classifier = nn.Linear(dim, num_classes)
            nn.init.normal_(self.classifier.weight, std=0.001)
            nn.init.zeros_(self.classifier.bias)
        if "mlm" in self.loss_names:
            self.cross_attn = Attention(dim, heads)
            self.cross_modal_transformer = Transformer(dim, cfg.model.cmt_depth, heads)
            self.ln_pre_t = LayerNorm(dim)
            self.ln_pre_i = LayerNorm(dim)
            self.ln_post = LayerNorm(dim)
            self.mlm_head = nn.Sequential(OrderedDict([
                ("dense", nn.Linear(dim, dim)), ("gelu", QuickGELU()), ("ln", LayerNorm(dim)),
                ("fc", nn.Linear(dim, clip_config.vocab_size))]))
            self._init_cross_modal(dim, cfg.model.cmt_depth)
        #: token ids (V',) the MLM softmax runs over, sorted; None = the whole vocabulary (IRRA). Set by
        #: :meth:`restrict_mlm_vocabulary`; not saved with the weights (the head keeps every row)
        self.register_buffer("mlm_vocab", None, persistent=False)

    def _init_cross_modal(self, width: int, depth: int) -> None:
        # IRRA: CLIP's std rule for the cross-modal blocks, the cross attention and the MLM head
        attn_std = width ** -0.5
        proj_std = width ** -0.5 * (2 * depth) ** -0.5
        fc_std = (2 * width) ** -0.5
        init_transformer_like_clip(self.cross_modal_transformer, width, depth)
        nn.init.normal_(self.cross_attn.in_proj_weight, std=attn_std)
        nn.init.normal_(self.cross_attn.out_proj.weight, std=proj_std)
        nn.init.normal_(self.mlm_head.dense.weight, std=fc_std)
        nn.init.normal_(self.mlm_head.fc.weight, std=proj_std)

    # ------------------------------------------------------------------ features
    def _global_only(self, need_tokens: bool) -> bool:
        return not need_tokens and self.prune_to_global_token

    def image_features(self, images: torch.Tensor, need_tokens: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor, list]:
        """images (B, 3, H, W) -> (global (B, D) float32, all tokens (B, 1 + P, D), EFP routing).

        ``need_tokens=False`` allows the tokens to be just the CLS token (B, 1, D) (see
        ``prune_to_global_token``); the global features are the same either way.
        """
        if self._global_only(need_tokens):
            tokens = fast.image_global_token(self.base_model.visual, images)
        else:
            tokens = self.base_model.encode_image(images)
        return tokens[:, 0].float(), tokens, []

    def text_features(self, caption_ids: torch.Tensor, need_tokens: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor, list]:
        """caption ids (B, L) -> (global (B, D) float32, tokens (B, L', D), EFP routing).

        L' = L, or the longest caption of the batch (EOT included) when ``trim_text_padding`` applies.
        ``need_tokens=False`` allows the tokens to be just the EOT token (B, 1, D).
        """
        eot = text_global_index(caption_ids)
        if self.trim_text_padding:
            caption_ids = fast.trim_padding(caption_ids, eot)
        if self._global_only(need_tokens):
            tokens = fast.text_global_token(self.base_model, caption_ids, eot)
            return tokens[:, 0].float(), tokens, []
        tokens = self.base_model.encode_text(caption_ids)
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), eot].float(), tokens, []

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> (B, D) float32, not normalised."""
        return self.image_features(images, need_tokens=False)[0]

    def encode_text(self, caption_ids: torch.Tensor) -> torch.Tensor:
        """caption ids (B, L) -> (B, D) float32, not normalised."""
        return self.text_features(caption_ids, need_tokens=False)[0]

    def cross_former(self, text_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """IRRA's implicit relation reasoning: text (B, L, D) attends over image (B, N, D) -> (B, L, D)."""
        x = self.cross_attn(self.ln_pre_t(text_tokens), self.ln_pre_i(image_tokens))
        return self.ln_post(self.cross_modal_transformer(x))

    # ------------------------------------------------------------------ training outputs
    def forward(self, batch: dict) -> dict:
        """Features and logits of one batch, what :func:`irra_core.losses.total_loss` reads.

        Args:
            batch: ``images`` (B, 3, H, W), ``caption_ids`` (B, L), ``pids`` (B,), and for ``mlm``
                ``mlm_ids`` (B, L) and ``mlm_labels`` (B, L) (original id at masked positions, 0 elsewhere).

        Returns:
            ``image_feats`` / ``text_feats`` (B, D) float32 global features, ``logit_scale`` (float); with the
            ``id`` head ``image_logits`` / ``text_logits`` (B, C) float32; with ``mlm`` ``mlm_scores`` (M, V)
            float32 at the M masked positions and their ``mlm_labels`` (M,); for PHP ``routing``:
            ``{"image": [LayerRouting, ...], "text": [...]}``, one per EFP layer.
        """
        names = self.loss_names
        image_feats, image_tokens, image_routing = self.image_features(batch["images"], need_tokens="mlm" in names)
        text_feats, _, text_routing = self.text_features(batch["caption_ids"], need_tokens=False)
        out: dict = {"image_feats": image_feats, "text_feats": text_feats, "logit_scale": self.logit_scale}
        if "id" in names:
            out["image_logits"], out["text_logits"] = self.classify(image_feats), self.classify(text_feats)
        if "mlm" in names:
            out["mlm_scores"], out["mlm_labels"] = self.mlm_scores(batch["mlm_ids"], batch["mlm_labels"], image_tokens)
        if image_routing or text_routing:
            out["routing"] = {"image": image_routing, "text": text_routing}
        return out

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """ID classifier: global features (B, D) -> identity logits (B, C) float32."""
        # under legacy_fp16 the classifier is fp16 and IRRA feeds it fp16 features (.half())
        return self.classifier(feats.to(self.classifier.weight.dtype)).float()

    def mlm_scores(self, mlm_ids: torch.Tensor, mlm_labels: torch.Tensor,
                   image_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """IRRA's MLM head on masked captions (B, L) over image tokens (B, N, D) -> (scores (M, V) float32,
        labels (M,)) at the M masked positions (labels != ``MLM_IGNORE_INDEX``).

        With a restricted vocabulary (:meth:`restrict_mlm_vocabulary`) the scores are (M, V') over those
        tokens and the labels index into them.

        Raises:
            ValueError: a label is not in the restricted vocabulary.
        """
        hidden = self.cross_former(self.base_model.encode_text(mlm_ids), image_tokens)
        masked = mlm_labels != losses.MLM_IGNORE_INDEX
        hidden, labels = hidden[masked], mlm_labels[masked]
        vocab = self.mlm_vocab
        if vocab is None:  # the 49,408-way head only at masked positions: IRRA's loss on its (B*L, V) scores
            return self.mlm_head(hidden).float(), labels
        head = self.mlm_head
        scores = F.linear(head.ln(head.gelu(head.dense(hidden))), head.fc.weight[vocab], head.fc.bias[vocab])
        index = torch.searchsorted(vocab, labels).clamp_max(vocab.numel() - 1)
        if not torch.equal(vocab[index], labels):
            missing = sorted(set(labels.tolist()) - set(vocab.tolist()))[:5]
            raise ValueError(f"MLM labels {missing} are not in the restricted MLM vocabulary of {vocab.numel()} "
                             f"tokens; set model.mlm_vocab: full, or restrict to the captions being trained on")
        return scores.float(), index

    def restrict_mlm_vocabulary(self, caption_ids: torch.Tensor | None) -> int:
        """Run the MLM softmax over the tokens of ``caption_ids`` (N, L) only (and padding, 0), or over the
        whole vocabulary again with None (``model.mlm_vocab``; ``fit`` passes the training captions).

        A deviation from IRRA's objective for short from-scratch runs on a CPU: the MLM labels are always
        tokens of the training captions, and the full (M, 49,408) head costs about half of an IRRA step at
        the ``cpu`` presets' width. Only the normaliser changes (tokens that never occur in a training caption
        leave the softmax); the head keeps all its rows, so checkpoints are unchanged. Returns V'.
        """
        if caption_ids is None:
            self.mlm_vocab = None
            return self.mlm_head.fc.out_features
        # token 0 (padding, never a label) stays first, so restricted label 0 still means "not masked" to
        # losses.compute_mlm's ignore_index
        ids = torch.unique(torch.cat([caption_ids.reshape(-1).cpu(), torch.zeros(1, dtype=torch.long)]))
        self.mlm_vocab = ids.to(self.mlm_head.fc.weight.device)
        return int(self.mlm_vocab.numel())

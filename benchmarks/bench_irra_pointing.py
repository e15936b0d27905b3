"""Why IRRA's relation-reasoning cross-attention misses the pointing game on the synthetic set (issue 16).

    python benchmarks/bench_irra_pointing.py --run outputs/bench_recipe/irra-cpu-base-<time> --checkpoint last

For one trained IRRA run (a recipe run or a workbook run's ``irra`` folder) on its synthetic test split, prints:

1. the pointing game (notebook 31's reading: the head-averaged cross-attention of the unmasked caption) per part
   and per word kind (noun, colour word);
2. where the attribute words' maps peak (:func:`irra_core.viz.attention.peak_concentration`): one background cell
   holding many words' peaks is an attention sink;
3. whether the colour a caption names sits in the named part's patches: each colour word of ``--pairs`` test
   captions is masked in turn (IRRA's ``[MASK]``) and the MLM head predicts it with the cross-attention's keys
   limited to the CLS token plus (a) every patch, (b) the patches inside the part's box, (c) the patches outside
   it, (d) no patch, and (e) every patch of another identity's image. Top-1 accuracy in percent. If (b) beats (a)
   the information is in the part, and the branch's attention is what fails to go there. Three more key sets
   test the cell where most words peak (point 2, the sink): (f) the CLS token plus that cell alone, (g) every
   patch but that cell, and (h) every patch with that cell taken from another identity's image. If (h) falls
   below (a), the MLM head reads image-specific content from the sink cell; if (g) does not, it does not need it.
4. with ``--relevance``, the pointing game of a second reading of the branch, gradient-weighted attention
   relevance (Chefer et al., ICCV 2021, "Generic Attention-model Explainability for Interpreting Bi-Modal and
   Encoder-Decoder Transformers"): each attribute word is masked in turn, and its map is what the MLM logit of
   the true word draws from each patch through the cross-attention and the cross-modal transformer
   (:func:`relevance_maps`). A sink that holds weight but no content would vanish from this reading.

The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEY_SETS = ("all patches", "inside the part", "outside the part", "CLS only", "another image",
            "CLS + sink cell", "all but the sink cell", "sink cell swapped")


def masked_colour_accuracy(run, pairs: int, sink_cell: int, seed: int = 0) -> dict[str, float]:
    """Top-1 MLM accuracy (percent) on the masked colour words of ``pairs`` random test captions, their image
    keyed eight ways (module docstring, point 3); ``sink_cell`` is the flat patch index (row * cols + col) of the
    cell where most words peak. Colour words whose part covers no patch centre, or every one, are left out
    (inside and outside would not differ); the count is returned under ``"words"``."""
    import numpy as np
    import torch

    from irra_core.data.synthetic import load_regions
    from irra_core.data.tokenizer import MASK_ID
    from irra_core.viz.attention import attribute_words, cells_in_box
    from irra_core.viz.inspect import decode_tokens, first_gallery_image

    model = run.model.eval()
    captions = run.split["captions"]
    n_images = len(run.split["img_paths"])
    rng = np.random.default_rng([seed, 11])
    hits = dict.fromkeys(KEY_SETS, 0)
    words = 0
    with torch.no_grad():
        for q in rng.choice(len(captions), size=min(pairs, len(captions)), replace=False):
            g = first_gallery_image(run, int(q))
            regions = load_regions(run.split["img_paths"][g])
            ids = run.caption_ids([captions[q]]).to(run.device)
            image = model.base_model.encode_image(run.model_images([g]).to(run.device))  # (1, 1 + P, D)
            grid = run_grid(run, image)
            other = model.base_model.encode_image(run.model_images([(g + n_images // 2) % n_images]).to(run.device))
            for index, part, kind in attribute_words(decode_tokens(ids[0].cpu())):
                if kind != "colour" or part not in regions:
                    continue
                inside = cells_in_box(regions[part], grid)
                if not inside.any() or inside.all():
                    continue
                keep_cls = torch.ones(1, dtype=torch.bool)
                sink = torch.zeros(image.shape[1], dtype=torch.bool)
                sink[1 + sink_cell] = True
                cls_and_sink = sink.clone()
                cls_and_sink[0] = True
                swapped = image.clone()
                swapped[:, sink] = other[:, sink]
                keys = {"all patches": image, "inside the part": image[:, torch.cat([keep_cls, inside])],
                        "outside the part": image[:, torch.cat([keep_cls, ~inside])], "CLS only": image[:, :1],
                        "another image": other, "CLS + sink cell": image[:, cls_and_sink],
                        "all but the sink cell": image[:, ~sink], "sink cell swapped": swapped}
                masked = ids.clone()
                label = int(masked[0, index])
                masked[0, index] = MASK_ID
                text = model.base_model.encode_text(masked)
                for name, tokens in keys.items():
                    hidden = model.cross_former(text, tokens)[0, index]
                    hits[name] += int(model.mlm_head(hidden[None]).argmax()) == label
                words += 1
    out = {name: 100.0 * h / max(words, 1) for name, h in hits.items()}
    out["words"] = words
    return out


def relevance_maps(run, pairs: int, seed: int = 0) -> list:
    """Gradient-weighted relevance maps of IRRA's relation-reasoning branch, one per attribute word, in
    :func:`irra_core.viz.attention.score_pointing`'s input format.

    Chefer et al. (ICCV 2021), rules for a text stream that cross-attends over fixed image tokens and then
    self-attends (IRRA's ``cross_former``, SPEC §1.9): with ``A`` an attention map (B, heads, Nq, Nk) and ``dA``
    the gradient of the target with respect to it, ``Abar = mean over heads of max(dA * A, 0)``. Relevance of
    the image keys for each text position starts as ``R = Abar_cross`` (L, 1 + P) and takes
    ``R <- R + Abar_self @ R`` for each layer of the cross-modal transformer. The target is the MLM logit of the
    word's own token with that word replaced by ``[MASK]`` (how the branch is trained), and the word's map is its
    row of ``R`` over the P patches (the CLS key dropped).

    Args:
        run: a loaded IRRA run (:func:`irra_core.viz.inspect.load_run`) on a synthetic split.
        pairs: test captions with their images, :func:`irra_core.viz.inspect.pointing_pairs` for ``seed`` (the
            pairs :func:`irra_core.viz.inspect.word_patch_maps` reads).

    Returns:
        ``[(maps (L', P), tokens (L',), regions)]``; rows of tokens that are not attribute words are zero.
    """
    import torch

    from irra_core.data.synthetic import load_regions
    from irra_core.data.tokenizer import MASK_ID
    from irra_core.viz.attention import attribute_words
    from irra_core.viz.inspect import decode_tokens, pointing_pairs

    model = run.model.eval()
    layers = [model.cross_attn] + [block.attn for block in model.cross_modal_transformer.resblocks]
    recorded: list = []
    saved = [layer.recorder for layer in layers]
    samples = []
    try:
        for layer in layers:
            layer.recorder = recorded.append
        for q, g in pointing_pairs(run, pairs, seed):
            ids = run.caption_ids([run.split["captions"][q]]).to(run.device)
            tokens = decode_tokens(ids[0].cpu())
            words = attribute_words(tokens)
            with torch.no_grad():
                image = model.base_model.encode_image(run.model_images([g]).to(run.device))  # (1, 1 + P, D)
            maps = torch.zeros(len(tokens), image.shape[1] - 1)
            if words:
                positions = torch.tensor([i for i, _, _ in words])
                masked = ids.repeat(len(words), 1)  # one row per word, that word masked
                rows = torch.arange(len(words))
                labels = masked[rows, positions].clone()
                masked[rows, positions] = MASK_ID
                with torch.no_grad():
                    text = model.base_model.encode_text(masked)
                recorded.clear()
                with torch.enable_grad():
                    hidden = model.cross_former(text.detach().requires_grad_(), image.expand(len(words), -1, -1))
                    logits = model.mlm_head(hidden[rows, positions])  # (W, V)
                    target = logits[rows, labels].sum()  # the rows are independent samples
                    grads = torch.autograd.grad(target, recorded)
                weighted = [(grad * probs).clamp_min(0).mean(1).detach() for grad, probs in zip(grads, recorded)]
                relevance = weighted[0]  # (W, L, 1 + P)
                for self_attention in weighted[1:]:  # (W, L, L)
                    relevance = relevance + self_attention @ relevance
                maps[positions] = relevance[rows, positions, 1:].float().cpu()
            samples.append((maps, tokens, load_regions(run.split["img_paths"][g])))
    finally:
        for layer, previous in zip(layers, saved):
            layer.recorder = previous
    return samples


def run_grid(run, image_tokens) -> tuple[int, int]:
    """The patch grid of the run's image tower (rows, cols), checked against the token count."""
    from irra_core.model.stem import patch_grid

    cfg = run.cfg.model
    grid = patch_grid(tuple(run.img_size), cfg.patch_size, cfg.stride_size)
    if grid[0] * grid[1] != image_tokens.shape[1] - 1:
        raise ValueError(f"{run.name}: {image_tokens.shape[1] - 1} patch tokens but a {grid} grid")
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a trained IRRA run folder (config.yaml, checkpoints/)")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"))
    parser.add_argument("--pairs", type=int, default=200, help="test captions for the pointing game")
    parser.add_argument("--mlm-pairs", type=int, default=300, help="test captions for the masked-colour readout")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--relevance", action="store_true",
                        help="also score gradient-weighted relevance maps (Chefer et al. 2021; point 4)")
    args = parser.parse_args(argv)

    import torch

    from irra_core.errors import UserError
    from irra_core.viz import attention
    from irra_core.viz.inspect import load_run, word_patch_maps

    torch.set_num_threads(args.threads)
    try:
        run = load_run(args.run, args.checkpoint)
    except (FileNotFoundError, ValueError, UserError) as error:  # a missing or unreadable run: say so, no traceback
        print(f"error: {error}")
        return 2
    if not hasattr(run.model, "cross_attn"):
        print(f"error: {args.run} has no relation-reasoning (MLM) branch; pass an IRRA run trained with 'mlm'")
        return 2
    samples, grid, _, _ = word_patch_maps(run, args.pairs)
    table = attention.score_pointing(samples, grid)
    by_part = attention.pointing_by_part(table)
    kinds = {}
    for kind in ("noun", "colour"):
        rows = table[table.kind == kind]
        n = int(rows.words.sum())
        kinds[kind] = {"words": n, "hit_rate": float((rows.hit_rate * rows.words).sum() / max(n, 1)),
                       "uniform_rate": float((rows.uniform_rate * rows.words).sum() / max(n, 1))}
    peaks = attention.peak_concentration(samples, grid)
    mlm = masked_colour_accuracy(run, args.mlm_pairs, peaks["cell"][0] * grid[1] + peaks["cell"][1])
    relevance = None
    if args.relevance:
        relevance_samples = relevance_maps(run, args.pairs)
        relevance = {"pointing": attention.pointing_by_part(attention.score_pointing(relevance_samples, grid)),
                     "peaks": attention.peak_concentration(relevance_samples, grid)}

    print(f"{run.name}: pointing game per part ({args.pairs} test captions)")
    print(by_part.round(2).to_string(index=False))
    for kind, r in kinds.items():
        print(f"  {kind:6s} words {r['words']:5d}: hit {r['hit_rate']:5.2f}%  uniform {r['uniform_rate']:5.2f}%")
    print(attention.sink_verdict(run.name, peaks))
    print(f"masked colour words ({mlm['words']}), MLM top-1 with the cross-attention keyed on "
          f"(sink cell: row {peaks['cell'][0]}, col {peaks['cell'][1]}):")
    for name in KEY_SETS:
        print(f"  {name:21s} {mlm[name]:5.1f}%")
    if relevance is not None:
        print("gradient-weighted relevance (Chefer et al. 2021), pointing game per part:")
        print(relevance["pointing"].round(2).to_string(index=False))
        print(attention.sink_verdict(f"{run.name} (relevance)", relevance["peaks"]))
        relevance = {"pointing": relevance["pointing"].round(3).to_dict("records"),
                     "peaks": {**relevance["peaks"], "cell": list(relevance["peaks"]["cell"])}}
    print(json.dumps({"run": str(args.run), "checkpoint": args.checkpoint,
                      "pointing": by_part.round(3).to_dict("records"), "kinds": kinds,
                      "peaks": {**peaks, "cell": list(peaks["cell"])}, "masked_colour_accuracy": mlm,
                      "relevance": relevance}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

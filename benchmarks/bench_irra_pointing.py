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
   the information is in the part, and the branch's attention is what fails to go there.

The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEY_SETS = ("all patches", "inside the part", "outside the part", "CLS only", "another image")


def masked_colour_accuracy(run, pairs: int, seed: int = 0) -> dict[str, float]:
    """Top-1 MLM accuracy (percent) on the masked colour words of ``pairs`` random test captions, their image
    keyed five ways (module docstring, point 3). Colour words whose part covers no patch centre, or every one,
    are left out (inside and outside would not differ); the count is returned under ``"words"``."""
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
                keys = {"all patches": image, "inside the part": image[:, torch.cat([keep_cls, inside])],
                        "outside the part": image[:, torch.cat([keep_cls, ~inside])], "CLS only": image[:, :1],
                        "another image": other}
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
    args = parser.parse_args(argv)

    import torch

    from irra_core.viz import attention
    from irra_core.viz.inspect import load_run, word_patch_maps

    torch.set_num_threads(args.threads)
    run = load_run(args.run, args.checkpoint)
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
    mlm = masked_colour_accuracy(run, args.mlm_pairs)

    print(f"{run.name}: pointing game per part ({args.pairs} test captions)")
    print(by_part.round(2).to_string(index=False))
    for kind, r in kinds.items():
        print(f"  {kind:6s} words {r['words']:5d}: hit {r['hit_rate']:5.2f}%  uniform {r['uniform_rate']:5.2f}%")
    print(attention.sink_verdict(run.name, peaks))
    print(f"masked colour words ({mlm['words']}), MLM top-1 with the cross-attention keyed on:")
    for name in KEY_SETS:
        print(f"  {name:17s} {mlm[name]:5.1f}%")
    print(json.dumps({"run": str(args.run), "checkpoint": args.checkpoint,
                      "pointing": by_part.round(3).to_dict("records"), "kinds": kinds,
                      "peaks": {**peaks, "cell": list(peaks["cell"])}, "masked_colour_accuracy": mlm}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

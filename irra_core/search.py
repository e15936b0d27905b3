"""``python -m irra_core.search --checkpoint PATH --gallery DIR "a sentence" ["another" ...]``: rank your own photos.

The command-line front of :mod:`irra_core.viz.photo_search` (which holds the gallery encoding, its cache, the
ranking and the figure); expected errors print one ``error: ...`` paragraph and exit 2 (:func:`irra_core.cli.run_cli`).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from irra_core.cli import UserError, run_cli
from irra_core.viz.photo_search import (IMAGE_SUFFIXES, Gallery, SearchResult, encode_gallery, find_images,
                                        plot_search, rank_sentences, search_photos)

__all__ = ["main", "find_images", "search_photos", "rank_sentences", "plot_search", "encode_gallery", "Gallery",
           "SearchResult", "IMAGE_SUFFIXES"]

def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m irra_core.search``; expected errors exit 2 with one paragraph (run_cli)."""
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m irra_core.search", allow_abbrev=False,
                                     description="Rank your own photos by sentences with any checkpoint.")
    parser.add_argument("sentences", nargs="+", metavar="SENTENCE", help="one or more descriptions (quote each)")
    parser.add_argument("--checkpoint", required=True,
                        help="a workbook run folder, an IRRA/PHP log folder (configs.yaml + best.pth) or a .pth/.pt")
    parser.add_argument("--gallery", required=True, help="folder of photos (searched recursively)")
    parser.add_argument("--top_k", type=int, default=10, help="results per sentence (default 10)")
    parser.add_argument("--out_dir", help="where results.csv and search.png go (default outputs/search/<time>)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--cache_dir", help="embedding cache folder (default <IRRA_CACHE>/search)")
    parser.add_argument("--no_cache", action="store_true", help="encode the photos again and cache nothing")
    parser.add_argument("--which", default="best", help="best | last (run folders)")
    parser.add_argument("--max_images", type=int, default=0, help="search only the first N files (0: all)")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        raise UserError(f"--top_k {args.top_k}: must be at least 1")
    cache = None if args.no_cache else (args.cache_dir or "default")
    result = search_photos(args.checkpoint, args.gallery, args.sentences, top_k=args.top_k, out_dir=args.out_dir,
                           device=args.device, cache_dir=cache, batch_size=args.batch_size, which=args.which,
                           max_images=args.max_images)
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())

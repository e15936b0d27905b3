"""``python -m irra_core.search``: rank a folder of photos (nested, mixed formats, one corrupt file) by sentences
with a released IRRA checkpoint; the embedding cache is reused while nothing changes and rebuilt when it does."""
from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest
import torch
from PIL import Image

from irra_core.config import load_config
from irra_core.data import build_transforms, prepare_dataset
from irra_core.search import find_images, main, search_photos
from test_model_presets import single_thread  # noqa: F401  (module-scoped, autouse)

SENTENCES = ["a man in a red coat", "a woman with a black bag"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """8 synthetic pedestrian photos in nested folders as jpg / PNG / webp, a corrupt .jpg and a text file."""
    root = tmp_path_factory.mktemp("search")
    cfg = load_config("irra-cpu", {"data.root": str(root / "data")}, smoke=True)
    ds = prepare_dataset(cfg)
    gallery = root / "photos"
    (gallery / "holiday" / "day2").mkdir(parents=True)
    for i, src in enumerate(ds.test["img_paths"][:8]):
        folder = [gallery, gallery / "holiday", gallery / "holiday" / "day2"][i % 3]
        with Image.open(src) as im:
            im.convert("RGB").save(folder / f"p{i}.{['jpg', 'PNG', 'webp', 'jpeg'][i % 4]}")
    (gallery / "holiday" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (gallery / "notes.txt").write_text("not an image")
    return gallery


def test_find_images_is_recursive_and_case_insensitive(photos):
    found = find_images(photos)
    assert len(found) == 9 and {p.suffix for p in found} == {".jpg", ".PNG", ".webp", ".jpeg"}
    assert not any(p.name == "notes.txt" for p in found)


def test_search_ranks_reports_the_corrupt_file_and_writes_csv_and_figure(photos, reference_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["--checkpoint", str(reference_dir / "irra_tiny"), "--gallery", str(photos), *SENTENCES,
                 "--top_k", "5", "--out_dir", str(out), "--cache_dir", str(tmp_path / "cache"), "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "8 images" in printed and "1 unreadable image(s)" in printed and "broken.jpg" in printed
    table = pd.read_csv(out / "results.csv")
    assert list(table.columns) == ["query", "rank", "score", "path"] and len(table) == 2 * 5
    assert (pd.read_csv(out / "unreadable.csv")["path"].str.endswith("broken.jpg")).all()
    with Image.open(out / "search.png") as figure:
        assert figure.size[0] > 300
    # the ranking is the cosine similarity of the model's own features, best first
    from irra_core.data import tokenize
    from irra_core.model.load import load_model

    model = load_model(reference_dir / "irra_tiny")
    transform = build_transforms(model.cfg.data.img_size, is_train=False)
    files = [p for p in find_images(photos) if p.name != "broken.jpg"]
    with torch.no_grad():
        images = torch.stack([transform(Image.open(p).convert("RGB")) for p in files])
        g = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        t = torch.nn.functional.normalize(model.encode_text(tokenize(SENTENCES, context_length=77)), dim=-1)
    sims = t @ g.T
    for q, sentence in enumerate(SENTENCES):
        rows = table[table["query"] == sentence].sort_values("rank")
        expected = [str(files[i]) for i in sims[q].argsort(descending=True)[:5].tolist()]
        assert list(rows["path"]) == expected
        assert list(rows["score"]) == pytest.approx(sims[q].sort(descending=True).values[:5].tolist(), abs=1e-5)


class _NoEncoding(torch.nn.Module):
    """Wraps a model; encoding an image is an error (proves the cache was used)."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.cfg = model, model.cfg

    def encode_image(self, images):
        raise AssertionError("the gallery was encoded although the cache holds it")

    def encode_text(self, ids):
        return self.inner.encode_text(ids)


def test_cache_is_reused_while_unchanged_and_invalidated_by_any_change(photos, reference_dir, tmp_path):
    from irra_core.model.load import load_model

    gallery = tmp_path / "photos"
    shutil.copytree(photos, gallery)
    ckpt = tmp_path / "irra"
    shutil.copytree(reference_dir / "irra_tiny", ckpt)
    cache = tmp_path / "cache"
    model = load_model(ckpt)
    run = dict(top_k=3, cache_dir=cache, device="cpu", progress=False)
    first = search_photos(ckpt, gallery, SENTENCES[:1], out_dir=tmp_path / "o1", model=model, **run)
    assert not first.gallery.from_cache and len(list(cache.glob("*.pt"))) == 1
    again = search_photos(ckpt, gallery, SENTENCES[:1], out_dir=tmp_path / "o2", model=_NoEncoding(model), **run)
    assert again.gallery.from_cache and again.table.equals(first.table)
    assert again.gallery.unreadable == first.gallery.unreadable  # the corrupt file is reported from the cache too
    # a photo edited (new mtime), a photo added, the checkpoint replaced: each one re-encodes
    target = next(gallery.rglob("p0.jpg"))
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    edited = search_photos(ckpt, gallery, SENTENCES[:1], out_dir=tmp_path / "o3", model=model, **run)
    assert not edited.gallery.from_cache
    shutil.copy(target, gallery / "new.jpg")
    added = search_photos(ckpt, gallery, SENTENCES[:1], out_dir=tmp_path / "o4", model=model, **run)
    assert not added.gallery.from_cache and len(added.gallery.paths) == 9
    best = ckpt / "best.pth"
    os.utime(best, ns=(best.stat().st_atime_ns, best.stat().st_mtime_ns + 10**9))
    replaced = search_photos(ckpt, gallery, SENTENCES[:1], out_dir=tmp_path / "o5", model=model, **run)
    assert not replaced.gallery.from_cache and len(list(cache.glob("*.pt"))) == 4


def test_expected_errors_exit_2_with_one_paragraph(photos, reference_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv, words in (
        (["--checkpoint", str(reference_dir / "irra_tiny"), "--gallery", str(empty), "a man"], "holds no image"),
        (["--checkpoint", str(reference_dir / "irra_tiny"), "--gallery", str(tmp_path / "nope"), "a man"],
         "no such folder"),
        (["--checkpoint", str(tmp_path / "missing.pth"), "--gallery", str(photos), "a man"], "does not exist"),
        (["--checkpoint", str(reference_dir / "irra_tiny"), "--gallery", str(photos), "  "], "non-empty sentence"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in " ".join(err.split()) and "Traceback" not in err  # wrapped


def test_max_images_searches_the_first_files_and_says_so(photos, reference_dir, tmp_path):
    result = search_photos(reference_dir / "irra_tiny", photos, SENTENCES[:1], top_k=2, out_dir=tmp_path / "o",
                           cache_dir=None, device="cpu", progress=False, max_images=3)
    first = [str(p) for p in find_images(photos)[:3]]
    assert sorted(map(str, result.gallery.paths)) == sorted(p for p in first if not p.endswith("broken.jpg"))
    assert "only the first 3 of 9 image files were searched" in result.summary()

"""Interactive explorers (ipywidgets) with static twins.

Each explorer keeps its state in plain attributes changed by update methods (``select_query``, ``search``,
``select_checkpoint`` ...) and draws it with :meth:`render`, which returns a matplotlib Figure built by the
same functions the notebooks use. :meth:`widget` wraps the update methods in ipywidgets controls and an
``Output`` that re-renders on every change; it is only built when a notebook runs with ``INTERACTIVE=True``
(papermill does not keep widget state, STYLE §2.6). Tests construct the explorers headless, call the update
methods and check :meth:`render`.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from matplotlib.figure import Figure

from irra_core.viz import retrieval, routing
from irra_core.viz.inspect import InspectRun


class _Explorer:
    """Shared by the explorers: ``render()`` draws the static figure; the widget shows it in an Output area."""

    _out = None  # the ipywidgets Output, created by widget(); None while headless

    def render(self, fig: Figure | None = None) -> Figure:  # pragma: no cover - overridden
        raise NotImplementedError

    def _refresh(self) -> None:
        if self._out is None:
            return
        from IPython.display import display

        self._out.clear_output(wait=True)
        with self._out:
            display(self.render())


class RetrievalExplorer(_Explorer):
    """Pick a query (or type a sentence) and a checkpoint; see the top-k with scores and ground truth.

    Args:
        runs: ``{label: InspectRun}``, e.g. ``{"irra/best": ..., "php/best": ...}`` (the checkpoint chooser).
        top_k: results shown.
        query_index: the query shown first.
    """

    def __init__(self, runs: Mapping[str, InspectRun] | InspectRun, top_k: int = 10, query_index: int = 0) -> None:
        self.runs = {runs.name: runs} if isinstance(runs, InspectRun) else dict(runs)
        if not self.runs:
            raise ValueError("RetrievalExplorer needs at least one run")
        self.top_k = top_k
        self.checkpoint = next(iter(self.runs))
        self.query_index = query_index
        self.text: str | None = None
        self._out = None

    @property
    def run(self) -> InspectRun:
        return self.runs[self.checkpoint]

    def select_checkpoint(self, name: str) -> None:
        if name not in self.runs:
            raise KeyError(f"unknown checkpoint {name!r}; choose one of {sorted(self.runs)}")
        self.checkpoint = name
        self._refresh()

    def select_query(self, index: int) -> None:
        n = len(self.run.split["captions"])
        if not 0 <= index < n:
            raise IndexError(f"query index {index} outside 0..{n - 1}")
        self.query_index, self.text = int(index), None
        self._refresh()

    def search(self, text: str) -> None:
        if not text or not text.strip():
            raise ValueError("type a sentence describing a person")
        self.text = text.strip()
        self._refresh()

    def current(self) -> dict:
        """The row drawn now: a table row for a picked query, a pid-less row for free text."""
        if self.text is not None:
            idx, scores = self.run.rank_text(self.text, self.top_k)
            return {"caption": self.text, "pid": None, "top10_indices": idx, "top10_scores": scores}
        table = self.run.query_table()
        return table[table["query_index"] == self.query_index].iloc[0].to_dict()

    def render(self, fig: Figure | None = None) -> Figure:
        row = self.current()
        fig = retrieval.plot_topk_gallery([row], self.run.display_image, self.run.split["image_pids"],
                                          top_k=min(self.top_k, len(row["top10_indices"])), fig=fig)
        label = "free text" if self.text is not None else f'query {self.query_index} (pid {row["pid"]})'
        fig.suptitle(f"{self.checkpoint}: {label}", y=1.12, fontsize=10)
        return fig

    def widget(self):
        """An ipywidgets box: checkpoint dropdown, query index, free-text box; the gallery below."""
        import ipywidgets as w

        ckpt = w.Dropdown(options=list(self.runs), value=self.checkpoint, description="checkpoint")
        query = w.BoundedIntText(value=self.query_index, min=0, max=len(self.run.split["captions"]) - 1,
                                 description="query")
        text = w.Text(placeholder="a woman in a red coat carrying a black backpack", description="free text",
                      layout=w.Layout(width="60%"))
        go = w.Button(description="search")
        self._out = w.Output()
        ckpt.observe(lambda ch: self.select_checkpoint(ch["new"]), names="value")
        query.observe(lambda ch: self.select_query(ch["new"]), names="value")
        go.on_click(lambda _: self.search(text.value))
        self._refresh()
        return w.VBox([w.HBox([ckpt, query]), w.HBox([text, go]), self._out])


class RoutingExplorer(_Explorer):
    """Pick an image, a caption and an EFP layer; see the per-patch and per-word experts.

    Args:
        run: a PHP run (its model must have EFP layers and CRFM).
        image_index: gallery image shown first.
        caption: caption shown first (default: the first query's).
        layer: EFP layer.
    """

    def __init__(self, run: InspectRun, image_index: int = 0, caption: str | None = None, layer: int = 0) -> None:
        self.run = run
        self.image_index = image_index
        self.caption = caption if caption is not None else run.split["captions"][0]
        self.layer = layer
        self._out = None

    def select_image(self, index: int) -> None:
        n = len(self.run.split["img_paths"])
        if not 0 <= index < n:
            raise IndexError(f"image index {index} outside 0..{n - 1}")
        self.image_index = int(index)
        self._refresh()

    def set_caption(self, caption: str) -> None:
        if not caption.strip():
            raise ValueError("caption is empty")
        self.caption = caption.strip()
        self._refresh()

    def select_layer(self, layer: int) -> None:
        self.layer = int(layer)
        self._refresh()

    def render(self, fig: Figure | None = None) -> Figure:
        from irra_core.viz.inspect import caption_expert_map, image_expert_map

        expert, share, grid, num_experts = image_expert_map(self.run, self.image_index, self.layer)
        words, w_expert, w_share, _ = caption_expert_map(self.run, self.caption, self.layer)
        fig = fig or Figure(figsize=(10, 4.2))
        gs = fig.add_gridspec(2, 2, width_ratios=[1, 4], height_ratios=[1, 1.2], hspace=0.5)
        routing.plot_patch_expert_map(self.run.display_image(self.image_index), expert, share, grid, num_experts,
                                      ax=fig.add_subplot(gs[:, 0]), title=f"image {self.image_index}")
        routing.plot_word_experts(words, w_expert.tolist(), num_experts, share=w_share.tolist(),
                                  ax=fig.add_subplot(gs[0, 1]), title="caption")
        # how much of this image (patches) and this caption (tokens) each expert covers
        ax = fig.add_subplot(gs[1, 1])
        cover = {"image patches": np.bincount(expert.numpy(), minlength=num_experts) / max(1, expert.numel()),
                 "caption tokens": np.bincount(w_expert.numpy(), minlength=num_experts) / max(1, w_expert.numel())}
        colors = routing.expert_colors(num_experts)
        for row, (label, frac) in enumerate(cover.items()):
            left = 0.0
            for e in range(num_experts):
                ax.barh(row, frac[e], left=left, color=colors[e])
                left += frac[e]
        ax.set_yticks(range(len(cover)))
        ax.set_yticklabels(list(cover), fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("share assigned to each expert")
        fig.suptitle(f"{self.run.name}: EFP layer {self.layer}, experts via CRFM weights", y=1.06, fontsize=10)
        return fig

    def widget(self, num_layers: int = 1):
        """An ipywidgets box: image index, EFP layer, caption text; the maps below."""
        import ipywidgets as w

        image = w.BoundedIntText(value=self.image_index, min=0, max=len(self.run.split["img_paths"]) - 1,
                                 description="image")
        layer = w.Dropdown(options=list(range(num_layers)), value=self.layer, description="EFP layer")
        text = w.Text(value=self.caption, description="caption", layout=w.Layout(width="70%"))
        go = w.Button(description="route")
        self._out = w.Output()
        image.observe(lambda ch: self.select_image(ch["new"]), names="value")
        layer.observe(lambda ch: self.select_layer(ch["new"]), names="value")
        go.on_click(lambda _: self.set_caption(text.value))
        self._refresh()
        return w.VBox([w.HBox([image, layer]), w.HBox([text, go]), self._out])


class PhotoSearchExplorer(_Explorer):
    """Type a sentence; see your own photos ranked by it (notebook 33). The gallery is encoded once.

    Args:
        model: an eval-mode model (``model.cfg`` gives the crop size and token length).
        gallery: an encoded :class:`irra_core.viz.photo_search.Gallery`.
        sentences: the sentences shown first (one row each).
        top_k: photos per sentence.
    """

    def __init__(self, model, gallery, sentences=("a person in a red coat",), top_k: int = 5,
                 device: str = "cpu") -> None:
        self.model, self.gallery, self.top_k, self.device = model, gallery, top_k, device
        self.sentences = list(sentences)
        self._out = None

    def search(self, text) -> None:
        """Rank the gallery for ``text`` (one sentence, or a list)."""
        sentences = [text] if isinstance(text, str) else list(text)
        if not sentences or any(not s.strip() for s in sentences):
            raise ValueError("type a sentence describing a person")
        self.sentences = [s.strip() for s in sentences]
        self._refresh()

    def table(self):
        """The current ranking: ``query, rank, score, path`` (:func:`irra_core.viz.photo_search.rank_sentences`)."""
        from irra_core.viz.photo_search import rank_sentences

        cfg = self.model.cfg
        return rank_sentences(self.model, self.gallery, self.sentences, top_k=self.top_k,
                              context_length=cfg.data.text_length, device=self.device)

    def render(self, fig: Figure | None = None) -> Figure:
        from irra_core.viz.photo_search import plot_search

        return plot_search(self.table(), self.model.cfg.data.img_size, top_k=self.top_k,
                           title=f"{len(self.gallery.paths)} photos under {self.gallery.root.name}")

    def widget(self):
        """An ipywidgets box: a sentence box and a search button; the ranked photos below."""
        import ipywidgets as w

        text = w.Text(value=self.sentences[0], placeholder="a woman in a red coat carrying a black backpack",
                      description="sentence", layout=w.Layout(width="60%"))
        go = w.Button(description="search")
        self._out = w.Output()
        go.on_click(lambda _: self.search(text.value))
        text.continuous_update = False
        text.observe(lambda ch: self.search(ch["new"]) if ch["new"].strip() else None, names="value")
        self._refresh()
        return w.VBox([w.HBox([text, go]), self._out])

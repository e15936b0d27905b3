"""Training curves: the epoch log table, the curve figure and the live callback (headless)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from irra_core.viz import curves

RECORDS = [
    {"epoch": 1, "step": 10, "lr": 1e-3, "loss": 9.0, "sdm_loss": 6.0, "id_loss": 3.0, "img_acc": 0.1,
     "routing": {"image": []}, "eval": {"split": "val", "t2i": {"R1": 20.0, "mAP": 25.0}, "i2t": {"R1": 15.0}}},
    {"epoch": 2, "step": 20, "lr": 5e-4, "loss": 6.0, "sdm_loss": 4.0, "id_loss": 2.0, "img_acc": 0.3,
     "eval": {"split": "val", "t2i": {"R1": 45.0, "mAP": 40.0}, "i2t": {"R1": 30.0}}},
    {"epoch": 3, "step": 30, "lr": 1e-4, "loss": 5.0, "sdm_loss": 3.5, "id_loss": 1.5, "img_acc": 0.4,
     "eval": {"split": "val", "t2i": {"R1": 40.0, "mAP": 41.0}, "i2t": {"R1": 33.0}}},
]


def test_log_frame_flattens_evaluations(tmp_path):
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(RECORDS)))
    frame = curves.log_frame(tmp_path)  # a run folder
    assert frame["epoch"].tolist() == [1, 2, 3]  # sorted by epoch
    assert frame["t2i_R1"].tolist() == [20.0, 45.0, 40.0] and frame["i2t_R1"].tolist() == [15.0, 30.0, 33.0]
    assert "routing" not in frame and frame["eval_split"].iloc[0] == "val"
    with pytest.raises(ValueError, match="empty"):
        curves.log_frame([])


def test_training_curves_show_each_loss_and_mark_the_best_epoch():
    fig = curves.plot_training_curves(RECORDS, title="IRRA")
    ax_loss, ax_eval, ax_lr = fig.axes
    labels = [line.get_label() for line in ax_loss.lines]
    assert labels == ["sdm", "id", "total"]
    np.testing.assert_allclose(ax_loss.lines[-1].get_ydata(), [9.0, 6.0, 5.0])
    best_lines = [line for line in ax_eval.lines if line.get_linestyle() == ":"]
    assert len(best_lines) == 1 and best_lines[0].get_xdata()[0] == 2  # t2i R1 peaks at epoch 2
    np.testing.assert_allclose(ax_lr.lines[0].get_ydata(), [1e-3, 5e-4, 1e-4])
    assert fig._suptitle.get_text() == "IRRA"


def test_live_curves_record_headless_and_draw_on_request(monkeypatch):
    import IPython.display

    monkeypatch.setattr(IPython.display, "display", lambda *a, **k: pytest.fail("headless runs must not display"))
    live = curves.LiveCurves(interactive=False, every=1)
    for step in range(1, 5):
        state = SimpleNamespace(step=step, epoch=1 + (step > 2), lr=1e-3,
                                outputs={"sdm_loss": 10.0 - step, "id_loss": 2.0, "img_acc": 0.5})
        live.on_step(state)
        if step % 2 == 0:
            live.on_epoch_end(SimpleNamespace(record=RECORDS[step // 2 - 1]))
    assert [s["step"] for s in live.steps] == [1, 2, 3, 4]
    assert set(live.steps[0]) == {"step", "epoch", "lr", "sdm_loss", "id_loss"}  # accuracies are not losses
    assert len(live.epochs) == 2
    fig = live.figure()
    ax_steps, ax_eval = fig.axes
    assert [line.get_label() for line in ax_steps.lines if not line.get_label().startswith("_")] == ["sdm", "id"]
    np.testing.assert_allclose(ax_eval.lines[0].get_ydata(), [20.0, 45.0])


def test_live_curves_redraw_in_place_when_interactive(monkeypatch):
    import IPython.display

    shown = []

    class Handle:
        def update(self, fig):
            shown.append(("update", fig))

    def fake_display(fig, display_id=False):
        shown.append(("display", fig))
        return Handle()

    monkeypatch.setattr(IPython.display, "display", fake_display)
    live = curves.LiveCurves(interactive=True, every=2)
    for step in range(1, 5):
        live.on_step(SimpleNamespace(step=step, epoch=1, lr=1e-3, outputs={"sdm_loss": 1.0}))
    assert [kind for kind, _ in shown] == ["display", "update"]  # steps 2 and 4, one output redrawn

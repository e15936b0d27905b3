"""What the training loop reports while it runs: per-epoch means (:class:`EpochMeter`, reduced over ranks,
with PHP's expert counts) and progress (:class:`Progress`: a tqdm bar in a terminal or JupyterLab, plain
lines under papermill, where bars stay at 0)."""
from __future__ import annotations

import sys
from typing import Any

import torch

from irra_core.distributed import all_reduce_sum

__all__ = ["EpochMeter", "Progress"]


class EpochMeter:
    """Means of the scalar outputs and sums of the expert counts over an epoch (reduced over ranks)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.routing: dict[str, list[torch.Tensor]] = {}
        self.routing_aux: dict[str, list[float]] = {}
        self.routing_steps = 0
        self.samples = 0

    def update(self, outputs: dict, batch_size: int) -> dict:
        scalars = {}
        for key, value in outputs.items():
            if key == "routing":
                self._update_routing(value)
                continue
            if torch.is_tensor(value) and value.numel() == 1:
                scalars[key] = float(value.detach().float())
            elif isinstance(value, (int, float)):
                scalars[key] = float(value)
        for key, value in scalars.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1
        self.samples += batch_size
        return scalars

    def _update_routing(self, routing: dict) -> None:
        self.routing_steps += 1
        for modality, layers in routing.items():
            counts = self.routing.setdefault(modality, [torch.zeros(0, dtype=torch.long) for _ in layers])
            auxes = self.routing_aux.setdefault(modality, [0.0 for _ in layers])
            for i, layer in enumerate(layers):
                c = layer["counts"].detach().to("cpu", torch.long)
                counts[i] = c if counts[i].numel() == 0 else counts[i] + c
                auxes[i] += float(layer["aux"].detach().float())

    def summary(self, device: torch.device) -> dict:
        keys = sorted(self.sums)
        totals = torch.tensor([self.sums[k] for k in keys] + [self.counts[k] for k in keys] + [self.samples],
                              dtype=torch.float64, device=device)
        totals = all_reduce_sum(totals).cpu().tolist()
        n = len(keys)
        out: dict[str, Any] = {k: totals[i] / max(totals[n + i], 1) for i, k in enumerate(keys)}
        out["loss"] = sum(v for k, v in out.items() if "loss" in k)
        out["samples"] = int(totals[-1])
        if self.routing:
            out["routing"] = {}
            for modality, layers in self.routing.items():
                entries = []
                for i, counts in enumerate(layers):
                    summed = all_reduce_sum(counts.to(device)).cpu()
                    aux = all_reduce_sum(torch.tensor([self.routing_aux[modality][i], self.routing_steps],
                                                      dtype=torch.float64, device=device)).cpu().tolist()
                    entries.append({"counts": [int(c) for c in summed.tolist()], "aux": aux[0] / max(aux[1], 1)})
                out["routing"][modality] = entries
        return out


class Progress:
    """A tqdm bar when interactive, else a plain line every ``log_period`` steps (papermill runs headless)."""

    def __init__(self, mode: str, log_period: int, enabled: bool) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode if enabled else "none"
        self.log_period = max(1, log_period)
        self.bar = None

    def start_epoch(self, epoch: int, num_epoch: int, total: int) -> None:
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=f"epoch {epoch}/{num_epoch}", leave=False, dynamic_ncols=True)

    def step(self, epoch: int, epoch_step: int, total: int, scalars: dict, lr: float) -> None:
        shown = {k: v for k, v in scalars.items() if k.endswith("loss") or k.endswith("acc")}
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items()}, refresh=False)
        elif self.mode == "lines" and (epoch_step % self.log_period == 0 or epoch_step == total):
            text = " ".join(f"{k} {v:.4f}" for k, v in shown.items())
            print(f"epoch {epoch} step {epoch_step}/{total} {text} lr {lr:.3g}", flush=True)

    def end_epoch(self, record: dict) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.mode != "none":
            ev = record.get("eval") or {}
            r1 = ev.get("t2i", {}).get("R1") if ev else None
            tail = f" {ev['split']} t2i R1 {r1:.2f}" if r1 is not None else ""
            print(f"epoch {record['epoch']} done: loss {record['loss']:.4f} "
                  f"{record['pairs_per_s']:.1f} pairs/s{tail}", flush=True)

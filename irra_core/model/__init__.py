"""The model layer: CLIP towers, IRRA's heads, PHP's CRFM + EFP, checkpoint import, capture hooks.

Entry points: :func:`build_model` (a configuration -> model), :func:`load_model` (any checkpoint: a run
folder, an IRRA/PHP log folder or a .pth -> model, with a load report), :func:`load_reference_run` (an IRRA/PHP log
folder -> model), :func:`load_pretrained_clip` (OpenAI weights), :func:`capture_attention` /
:func:`capture_routing` (opt-in recording for visualisation).
"""
from __future__ import annotations

from irra_core.model.build import build_model, clip_config_from_cfg
from irra_core.model.capture import capture_attention, capture_routing
from irra_core.model.clip import CLIP, CLIPConfig
from irra_core.model.irra import IRRA
from irra_core.model.load import LoadReport, init_from_checkpoint, load_model, read_checkpoint
from irra_core.model.php import PHP
from irra_core.model.pretrained import load_clip_state_dict, load_pretrained_clip
from irra_core.model.reference import load_reference_run

__all__ = [
    "build_model", "clip_config_from_cfg", "load_reference_run", "load_pretrained_clip", "load_clip_state_dict",
    "load_model", "read_checkpoint", "init_from_checkpoint", "LoadReport",
    "capture_attention", "capture_routing", "CLIP", "CLIPConfig", "IRRA", "PHP",
]

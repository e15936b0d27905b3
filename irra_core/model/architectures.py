"""The model classes by ``cfg.model.arch``: adding an architecture is one class and one entry here."""
from __future__ import annotations

from irra_core.config import Config, ConfigError
from irra_core.losses import LOSSES
from irra_core.model import fast
from irra_core.model.clip import CLIPConfig
from irra_core.model.irra import IRRA
from irra_core.model.php import PHP

__all__ = ["ARCHITECTURES", "create_model"]

#: ``cfg.model.arch`` -> model class (constructor ``(cfg, clip_config, num_classes)``)
ARCHITECTURES: dict[str, type[IRRA]] = {"irra": IRRA, "php": PHP}


def create_model(cfg: Config, clip_config: CLIPConfig, num_classes: int) -> IRRA:
    """A randomly initialised model of class ``ARCHITECTURES[cfg.model.arch]`` with the faster attention
    kernel (:func:`irra_core.model.fast.use_fast_attention`), in float32.

    Raises:
        ConfigError: ``cfg.model.arch`` names no architecture, or ``cfg.loss.names`` a loss without a function.
    """
    if cfg.model.arch not in ARCHITECTURES:
        raise ConfigError(f"'model.arch' = {cfg.model.arch!r} is not one of {sorted(ARCHITECTURES)}")
    unknown = [name for name in cfg.loss_names() if name not in LOSSES]
    if unknown:
        raise ConfigError(f"'loss.names' = {cfg.loss.names!r}: no loss function for {unknown} in "
                          f"irra_core.losses.LOSSES ({sorted(LOSSES)}); register one with @register_loss")
    return fast.use_fast_attention(ARCHITECTURES[cfg.model.arch](cfg, clip_config, num_classes))

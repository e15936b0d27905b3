"""irra_core: IRRA and PHP for text-to-image person retrieval, written anew, correct by default.

Sub-modules (imported lazily, so ``import irra_core`` stays cheap):
config, data, model, losses, optim, scheduler, engine, evaluation, viz, pipeline.
Importing it changes no process state: the C-allocator tuning that CPU training and evaluation need is applied
by :func:`irra_core.engine.fit` and :func:`irra_core.evaluation.encode_split` (:mod:`irra_core.runtime`).
"""

__version__ = "0.1.0"

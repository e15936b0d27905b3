"""irra_core: IRRA and PHP for text-to-image person retrieval, written anew, correct by default.

Sub-modules (imported lazily, so ``import irra_core`` stays cheap):
config, data, model, losses, optim, engine, evaluation, viz, pipeline.
"""
__version__ = "0.1.0"

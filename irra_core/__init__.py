"""irra_core: IRRA and PHP for text-to-image person retrieval, written anew, correct by default.

Sub-modules (imported lazily, so ``import irra_core`` stays cheap):
config, data, model, losses, optim, scheduler, engine, evaluation, viz, pipeline.
"""
from irra_core.runtime import tune_allocator as _tune_allocator

__version__ = "0.1.0"

# Keep activation memory mapped between steps: page faults made CPU training ~8x slower here
# (irra_core/runtime.py explains; IRRA_MALLOC_TUNING=0 opts out).
_tune_allocator()

"""Triton versions of the resample ops (upsample-and-concat, the noisy hand-over).

Until the kernels land, these names are the reference functions of `lowdiff_sched.resample`,
so callers can already import them from here.
"""

from ..resample import upsample_concat, upsample_renoise

__all__ = ["upsample_concat", "upsample_renoise"]

"""diffusers models as cascades: `from_diffusers(model, scheduler, levels=None)` (needs the
optional dependency: pip install 'lowdiff-sched[diffusers]')."""

from .cascade import DiffusersCascade, from_diffusers

__all__ = ["DiffusersCascade", "from_diffusers"]

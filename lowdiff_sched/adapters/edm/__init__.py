"""EDM (Karras et al. 2022) backbones made cascade-aware: SongUNet and its preconditioners
with EDM's parameter names, a safe loader for EDM pickles, and the LowDiff retrofit."""

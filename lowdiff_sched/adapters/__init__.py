"""Cascade adapters: concrete `ResolutionCascade` implementations.

Importing the package registers each trainable backbone's model format with
`runs.register_format`, so model specs of every backbone are read and written in one place.
"""

from .dit import weights as _dit_weights  # noqa: F401
from .edm import lowdiff as _edm_lowdiff  # noqa: F401

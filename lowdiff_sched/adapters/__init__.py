"""Cascade adapters: concrete `ResolutionCascade` implementations, one package (or module)
per backbone, each with its `backbones.Backbone` record, listed in pyproject.toml's
`lowdiff_sched.backbones` entry points."""

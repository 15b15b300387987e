"""Cascade adapters: concrete `ResolutionCascade` implementations."""

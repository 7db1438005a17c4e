"""The atoms, importable as ``from julius_magics.atoms import ApplyFn, Train, Predict, Score, Alias``."""

from .rules.atoms import Alias, ApplyFn, Atom, Predict, Score, Train

__all__ = ["Alias", "ApplyFn", "Atom", "Predict", "Score", "Train"]

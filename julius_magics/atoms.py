"""The atoms' public import path: ``from julius_magics.atoms import ApplyFn, Train, Predict, Score, Alias``.

SPEC.md documents this path; the atoms themselves live in :mod:`julius_magics.rules.atoms`
(which the package imports internally). This module only re-exports them.
"""

from .rules.atoms import Alias, ApplyFn, Atom, Predict, Score, Train

__all__ = ["Alias", "ApplyFn", "Atom", "Predict", "Score", "Train"]

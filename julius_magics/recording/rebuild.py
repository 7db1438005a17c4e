"""Rebuilt environments: the one import for replaying a recording in its own environment.

A recorded environment (:mod:`.environment`) holds every distribution's exact version
and origin, the package indexes, the Python version and the platform.  From it, each
job in its own module:

- :mod:`.pins`: the :class:`PinSet` to install (:func:`pin_set`), and the pins as text
  (:func:`recorded_pins`: requirements, uv-lock, conda);
- :mod:`.venvs`: the venv built with uv and cached (:func:`build_environment`), the
  platform and Python checks, editable/local packages and the wheels embedded for them;
- :mod:`.isolated`: the replay run inside the rebuilt interpreter
  (:func:`replay_isolated`, :func:`run_isolated_job`);
- :mod:`.bisection`: which package change alters a differing result
  (:func:`bisect_environment`).

The front-ends import these names from here.  ``python -m julius_magics.recording.rebuild``
still runs the isolated replay job (``python -m julius_magics.recording.isolated``).
"""

from __future__ import annotations

import sys

from .bisection import BisectReport, bisect_environment, replay_until
from .isolated import IsolatedReplay, main, replay_isolated, run_isolated_job
from .pins import PinSet, RebuildError, environments_for, pin_set, recorded_pins
from .venvs import (
    BuiltEnvironment, build_environment, build_local_wheels, embed_local_wheels, envs_root, recorded_wheels,
    uv_binary,
)

__all__ = ["RebuildError", "PinSet", "pin_set", "environments_for", "recorded_pins", "BuiltEnvironment",
           "build_environment", "build_local_wheels", "embed_local_wheels", "recorded_wheels", "uv_binary",
           "envs_root", "IsolatedReplay", "replay_isolated", "run_isolated_job", "BisectReport",
           "bisect_environment", "replay_until", "main"]

if __name__ == "__main__":
    sys.exit(main())

"""``tandem.mine``: the mining package's entry points under their first name (:mod:`tandem.mining` is the package:
candidates, denoise, pools, report, run)."""

from __future__ import annotations

from tandem.mining import *  # noqa: F403
from tandem.mining import __all__  # noqa: F401

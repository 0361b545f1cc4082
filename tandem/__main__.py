from __future__ import annotations

from tandem.cli import main

main()

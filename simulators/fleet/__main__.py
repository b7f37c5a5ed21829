"""``python -m simulators.fleet ...`` = ``avl simulate ...``."""

from simulators.fleet.cli import main

raise SystemExit(main())

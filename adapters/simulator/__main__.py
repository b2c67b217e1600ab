"""``python -m adapters.simulator``: run the upstream simulator."""

from adapters.simulator.cli import main

raise SystemExit(main())

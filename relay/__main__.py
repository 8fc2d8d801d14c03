"""``python -m relay`` is ``ci-relay``."""

from relay.cli import main

raise SystemExit(main())

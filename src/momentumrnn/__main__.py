"""``python -m momentumrnn``: the ``momentumrnn`` command line."""

from .experiments.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

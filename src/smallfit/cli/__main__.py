"""``python -m smallfit.cli``: the same as the ``smallfit`` command."""

from smallfit.cli import main

main()

"""`python -m cosim ...` is the `cosim` command (cosim.console)."""

from cosim.console import main

main()

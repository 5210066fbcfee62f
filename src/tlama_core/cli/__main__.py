"""`python -m tlama_core.cli ...` runs the `tlama` command (where the console script is not on PATH)."""

from tlama_core.cli import main

main()

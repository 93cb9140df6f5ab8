"""``python -m advprotect`` = the ``advprotect`` command."""

from advprotect.cli import main

main()

"""python -m daemon: the mastmirror command."""

from daemon.cli import main

main()

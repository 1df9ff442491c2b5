"""`memgrid` and `python -m memgrid`: the command line (memgrid.cli), with a signal received
while it starts (Python, click, pyarrow and torch take half a second to import) ending it in one
line, exit status 128 + the signal's number, as the commands' own handlers do once they run."""

import os
import signal
import sys


def _starting(signum, frame) -> None:
    name = signal.Signals(signum).name
    sys.stderr.write(f"memgrid: interrupted ({name}) while starting: nothing started, nothing written\n")
    os._exit(128 + signum)


def main() -> None:
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _starting)
    from memgrid.cli import main as cli

    cli()


if __name__ == "__main__":
    main()

"""`lazaretto-lab` (or `python -m lazaretto_lab`): the lab's own commands, never part of the production CLI.

lazaretto-lab infect [--workdir run]   make `make run`'s household PC scan (see lazaretto_lab.infect)
"""

from __future__ import annotations

import sys

from . import infect

COMMANDS = {"infect": infect.main}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__.strip() if __doc__ else "", file=sys.stderr)
        sys.exit(2)
    COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()

"""``python -m bndl.worker``: start a worker process (see ``--help``)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from bndl.worker import tasklogs
from bndl.worker.config import parse
from bndl.worker.server import serve


def main(argv: Sequence[str] | None = None) -> int:
    config, log_level = parse(argv)
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    tasklogs.install()  # what tasks print: captured per run, and prefixed by its key on stderr
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())

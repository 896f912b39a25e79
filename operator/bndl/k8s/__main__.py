"""``python -m bndl.k8s``: run the BndlJob operator (see ``--help``)."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Sequence

import kopf

from bndl.k8s.handlers import Operator
from bndl.k8s.settings import parse


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse(argv)
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # kopf logs every handler call on every object event at INFO: keep its warnings only.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    operator = Operator(settings)
    # kopf would ask getpass for the user name, which fails for a numeric user without a
    # passwd entry (the restricted Pod Security Standard's runAsUser): name the process here.
    identity = f"bndl-operator@{socket.gethostname()}/{os.getpid()}"
    kopf.run(
        identity=identity,  # type: ignore[arg-type]  # kopf's NewType is not public
        registry=operator.registry(),
        standalone=settings.standalone,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=settings.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

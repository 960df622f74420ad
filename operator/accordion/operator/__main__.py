"""`python -m accordion.operator` (or `accordion-operator`): run the operator with kopf.

Equivalent to `kopf run --all-namespaces -m accordion.operator.handlers`, with kopf peering for
leader election unless `--standalone` is given (two replicas never act at once). When `POD_ID`
is not set (outside a pod) it sets one, so that kopf and the control loop agree on this
operator's peering identity (see `accordion.operator.peering`).
"""

from __future__ import annotations

import os
import secrets
import socket
import sys

import kopf


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    standalone = "--standalone" in args
    # Importing the module registers its handlers with kopf's default registry.
    import accordion.operator.handlers  # noqa: F401
    from accordion.operator.config import OperatorConfig

    config = OperatorConfig.load()
    os.environ.setdefault("POD_ID", f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}")
    kopf.run(
        clusterwide=True,
        standalone=standalone,
        peering_name=None if standalone else config.peering_name,
        priority=config.peering_priority,
        liveness_endpoint="http://0.0.0.0:8081/healthz",
    )


if __name__ == "__main__":
    main()

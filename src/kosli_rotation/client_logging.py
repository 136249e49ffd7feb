"""Client libraries' loggers pinned to WARNING, so a deployment at DEBUG cannot leak credentials through them.

At DEBUG, botocore logs STS answers (assumed-role credentials) and request bodies (the key written to Secrets
Manager), PyGithub response bodies (GitHub App installation tokens), and the others request and response
details. Those credentials exist before this tool can register them with the masker, so the only safe level
for these loggers is one where they say nothing routine. ``pin_client_loggers`` runs when the package is
imported and again whenever a consumer builds its client: some libraries set their own level on import
(PyGithub sets ``github`` to INFO), which would undo an earlier pin.
"""

from __future__ import annotations

import logging

#: Loggers of the clients this tool drives (and of the HTTP stacks beneath them).
CLIENT_LOGGERS = (
    "botocore",
    "boto3",
    "urllib3",
    "github",
    "kubernetes",
    "gitlab",
    "hvac",
    "requests_oauthlib",
    "jenkins",
    "google",  # at DEBUG Secret Manager's REST transport logs request bodies, the key among them
    "azure",
    "msal",
)
PINNED_LEVEL = logging.WARNING


def pin_client_loggers() -> None:
    """Set every client logger to WARNING (children inherit it unless they set a level of their own)."""
    for name in CLIENT_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < PINNED_LEVEL:
            logger.setLevel(PINNED_LEVEL)

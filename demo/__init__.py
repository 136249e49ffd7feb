"""``make demo``: a local Kosli key rotation to watch in the Airflow UI, in one command.

It starts an OpenBao dev server, the Kosli sandbox and ``airflow standalone`` on free loopback
ports, seeds two service-account keys with their consumers, triggers one rotation of each
(strategy ``rotate`` and ``replace``), follows the runs and checks the outcome directly in Vault,
the consumers and the sandbox. Everything lives in a state directory (``.demo/`` by default).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The demo validates the inventory and computes fingerprints with the product's own library,
# which ships in plugins/ (Airflow puts that folder on sys.path; a plain Python process does not).
if str(REPO / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO / "plugins"))

"""``make demo``: a local Kosli key rotation to watch in the Airflow UI, in one command.

It starts an OpenBao dev server, the Kosli sandbox, one sandbox of every consumer service (GitHub,
GitLab, Jenkins, CircleCI, Kubernetes, moto for AWS; threads of the demo process, see ``sandbox/fleet.py``)
and ``airflow standalone`` on free loopback ports, seeds two service-account keys with their consumers
(between them, one of every kind), triggers one rotation of each (strategy ``rotate`` and ``replace``),
follows the runs and checks the outcome directly in Vault, the Kosli sandbox and each consumer's own service
(canary jobs and a Deployment restart included). Then it scans the real Airflow deployment's database and
log files for every key involved (``demo/hygiene.py``). Everything lives in a state directory (``.demo/``
by default).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

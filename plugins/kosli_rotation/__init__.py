"""Zero-downtime rotation of Kosli service-account API keys, orchestrated by Apache Airflow.

This package is the library behind ``dags/kosli_key_rotation.py``. It lives in ``plugins/`` so
that Airflow puts it on ``sys.path`` for the scheduler, workers and triggerer alike, and
``plugins/.airflowignore`` keeps Airflow's plugin loader from importing its modules one by one.

Importing it pins the client libraries' loggers to WARNING (``client_logging``): credentials they would log at
DEBUG never reach a log, whatever level the deployment runs at.
"""

from kosli_rotation.client_logging import pin_client_loggers

__version__ = "0.1.0"

pin_client_loggers()

"""Zero-downtime rotation of Kosli service-account API keys, orchestrated by Apache Airflow.

This package is the library behind ``dags/kosli_key_rotation.py``, installed as the provider distribution
``airflow-provider-kosli-rotation``: the scheduler, workers and triggerer import it from site-packages, never from
a plugins folder (whose loader would import each module under its bare file name).

Importing it pins the client libraries' loggers to WARNING (``client_logging``): credentials they would log at
DEBUG never reach a log, whatever level the deployment runs at.
"""

from kosli_rotation.client_logging import pin_client_loggers

__version__ = "0.1.0"

pin_client_loggers()

"""Zero-downtime rotation of Kosli service-account API keys, orchestrated by Apache Airflow.

This package is the library behind ``dags/kosli_key_rotation.py``. It lives in ``plugins/`` so
that Airflow puts it on ``sys.path`` for the scheduler, workers and triggerer alike, and
``plugins/.airflowignore`` keeps Airflow's plugin loader from importing its modules one by one.
"""

__version__ = "0.1.0"

"""What Airflow's ProvidersManager learns about this provider, without importing the rest of the library.

Airflow calls ``get_provider_info`` through the ``apache_airflow_provider`` entry point of the installed
distribution (pyproject.toml) and checks ``package-name`` against the distribution's own name. Airflow 3 reads the
connection form from here (``ui-field-behaviour``; ``conn-fields`` would add extra fields, and the Kosli form needs
none), so the hook defines no deprecated ``get_ui_field_behaviour``. The "Key rotation" page is not declared under
``plugins``: Airflow 3.3 loads those only with ``[core] lazy_discover_providers = False``, so the page comes from the
distribution's ``airflow.plugins`` entry point instead (``kosli_rotation.ui_plugin``), which every component loads.
"""

from __future__ import annotations

from typing import Any

# Kept literal (not imported from kosli_rotation) so that reading the provider info imports nothing else.
VERSION = "0.1.0"
INTEGRATION = "Kosli"


def get_provider_info() -> dict[str, Any]:
    """The provider's parts: the ``kosli`` connection type and the triggers the triggerer must import."""
    return {
        "package-name": "airflow-provider-kosli-rotation",
        "name": "Kosli key rotation",
        "description": "Zero-downtime rotation of Kosli service-account API keys, orchestrated by Apache Airflow.",
        "versions": [VERSION],
        "integrations": [
            {"integration-name": INTEGRATION, "external-doc-url": "https://docs.kosli.com/", "tags": ["service"]}
        ],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": ["kosli_rotation.kosli_hook"]}],
        "sensors": [
            {
                "integration-name": INTEGRATION,
                "python-modules": ["kosli_rotation.sensors", "kosli_rotation.window_wait"],
            }
        ],
        "triggers": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "kosli_rotation.triggers.GraceEndTrigger",
                    "kosli_rotation.triggers.WindowOpenTrigger",
                ],
            }
        ],
        "connection-types": [
            {
                "connection-type": "kosli",
                "hook-class-name": "kosli_rotation.kosli_hook.KosliHook",
                "hook-name": "Kosli",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port", "extra"],
                    "relabeling": {"host": "Kosli host", "password": "Admin API key"},
                    "placeholders": {
                        "host": "https://app.kosli.com",
                        "password": "an admin API key that manages service-account keys",
                    },
                },
            }
        ],
    }

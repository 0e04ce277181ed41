# tiergate with the Kafka extra: the image docker-compose.kafka.yml runs as the topic step and the worker,
# and deploy/k8s runs as the worker and the embedded server. It runs as the unprivileged user `tiergate`,
# which owns /app and the data directory (the embedded server's; the worker keeps its state in Kafka); the
# data directory is absolute, whatever the working dir.
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 tiergate \
    && mkdir -p /app /var/lib/tiergate/data \
    && chown -R tiergate:tiergate /app /var/lib/tiergate
WORKDIR /app
COPY --chown=tiergate:tiergate pyproject.toml setup.py README.md ./
COPY --chown=tiergate:tiergate models ./models
COPY --chown=tiergate:tiergate streams ./streams
# setup.py compiles the fold with mypyc: a C compiler for the build, removed in the same layer
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-cache-dir '.[kafka]' && rm -rf build \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*
# the example policy the compose file points at (the topic definition ships with the package)
COPY --chown=tiergate:tiergate examples/policy.yaml ./examples/policy.yaml
ENV TIERGATE_DATA_DIR=/var/lib/tiergate/data
VOLUME ["/var/lib/tiergate"]
USER tiergate
ENTRYPOINT ["tiergate"]

# tiergate with the Kafka extra: the image docker-compose.kafka.yml runs as the topic step and the worker.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY models ./models
COPY streams ./streams
RUN pip install --no-cache-dir '.[kafka]'
# the topic definition and the example policy the compose file points at
COPY deploy/topics.yaml ./deploy/topics.yaml
COPY examples/policy.yaml ./examples/policy.yaml
RUN useradd --create-home tiergate
USER tiergate
ENTRYPOINT ["tiergate"]

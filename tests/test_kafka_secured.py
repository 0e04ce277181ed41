"""A secured cluster: SASL/SCRAM over TLS, on a second, secured listener of a local broker.

The test makes a self-signed certificate with keytool, starts a broker (deploy/kafka/broker.sh, its own
ports and data) whose second listener is SASL_SSL, creates SCRAM credentials through the admin API
(Kafka's ConfigCommand), and runs topic creation, a producer and a tiergate worker over that listener.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tiergate.streams.kafka import DECISIONS, EVENTS, KafkaSettings, create_topics

from .kafka_harness import BROKER, ROOT, TEST_TOPICS, Deployment, kafka_ports, wait_for

pytestmark = pytest.mark.kafka
PASSWORD = "alice-secret"


def keytool(*args: str) -> None:
    subprocess.run(["keytool", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def secured_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A broker with PLAINTEXT (for the admin step) and SASL_SSL listeners; yields (SASL_SSL port, CA file)."""
    tmp = tmp_path_factory.mktemp("secured")
    store, ca = tmp / "broker.p12", tmp / "ca.pem"
    keytool(
        "-genkeypair",
        "-alias",
        "broker",
        "-keyalg",
        "RSA",
        "-keysize",
        "2048",
        "-validity",
        "2",
        "-dname",
        "CN=localhost",
        "-ext",
        "SAN=dns:localhost,ip:127.0.0.1",
        "-keystore",
        str(store),
        "-storetype",
        "PKCS12",
        "-storepass",
        "changeit",
        "-keypass",
        "changeit",
    )
    keytool(
        "-exportcert", "-alias", "broker", "-keystore", str(store), "-storepass", "changeit", "-rfc", "-file", str(ca)
    )
    plain, controller, secure = kafka_ports(3)
    extra = tmp / "secure.properties"
    extra.write_text(
        "\n".join(
            [
                f"listeners=PLAINTEXT://127.0.0.1:{plain},CONTROLLER://127.0.0.1:{controller},SASL_SSL://127.0.0.1:{secure}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{plain},SASL_SSL://127.0.0.1:{secure}",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
                "sasl.enabled.mechanisms=SCRAM-SHA-256",
                "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config="
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
                f"ssl.keystore.location={store}",
                "ssl.keystore.type=PKCS12",
                "ssl.keystore.password=changeit",
                "ssl.key.password=changeit",
                "",
            ]
        )
    )
    env = os.environ | {
        "TIERGATE_KAFKA_PORT": str(plain),
        "TIERGATE_KAFKA_CONTROLLER_PORT": str(controller),
        "TIERGATE_KAFKA_RUN": str(tmp / "run"),
        "TIERGATE_KAFKA_EXTRA": str(extra),
        "TIERGATE_KAFKA_HEAP": "384m",
    }
    subprocess.run([str(BROKER), "start"], check=True, env=env, cwd=ROOT)
    try:
        subprocess.run(  # SCRAM credentials through the admin API (AlterUserScramCredentials)
            [
                "java",
                "-cp",
                str(ROOT / "deploy" / "kafka" / "target" / "jars" / "*"),
                "kafka.admin.ConfigCommand",
                "--bootstrap-server",
                f"127.0.0.1:{plain}",
                "--alter",
                "--entity-type",
                "users",
                "--entity-name",
                "alice",
                "--add-config",
                f"SCRAM-SHA-256=[iterations=4096,password={PASSWORD}]",
            ],
            check=True,
            capture_output=True,
        )
        yield secure, ca
    finally:
        subprocess.run([str(BROKER), "stop"], env=env, cwd=ROOT)


def settings(port: int, ca: Path, prefix: str, password: str = PASSWORD) -> KafkaSettings:
    return KafkaSettings(
        bootstrap=f"127.0.0.1:{port}",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="alice",
        sasl_password=password,
        ssl_cafile=ca,
        topic_prefix=prefix,
        topics_file=ROOT / "deploy" / "topics.yaml",
    )


def test_topics_a_producer_and_a_worker_work_over_sasl_scram_and_tls(
    secured_broker: tuple[int, Path], tmp_path: Path
) -> None:
    """With SCRAM credentials and the CA, everything tiergate does on Kafka works over the secured listener;
    a wrong password is refused."""
    port, ca = secured_broker
    secure = settings(port, ca, "sec.")
    assert "sec.tiergate.events.v1" in asyncio.run(create_topics(secure, 1, TEST_TOPICS))

    async def produce(kafka: KafkaSettings) -> None:
        producer = AIOKafkaProducer(**kafka.client_kwargs())
        await producer.start()
        try:
            event = {
                "type": "action",
                "event_id": "s1",
                "ts": "2026-10-01T00:00:00Z",
                "action_type": "reply_to_ticket",
                "action_id": "a1",
                "tier": "walk",
            }  # above the map's crawl: a violation decision
            await producer.send_and_wait(kafka.topic(EVENTS), orjson.dumps(event), key=b"reply_to_ticket")
        finally:
            await producer.stop()

    asyncio.run(produce(secure))
    with pytest.raises(Exception):  # noqa: B017 - aiokafka raises its own error types for a failed handshake
        asyncio.run(produce(settings(port, ca, "sec.", password="wrong")))

    env = {
        "TIERGATE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "TIERGATE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "TIERGATE_KAFKA_SASL_USERNAME": "alice",
        "TIERGATE_KAFKA_SASL_PASSWORD": PASSWORD,
        "TIERGATE_KAFKA_SSL_CAFILE": str(ca),
    }
    deployment = Deployment(tmp_path, prefix="sec.")
    original = os.environ.copy()
    os.environ.update(env)
    try:
        deployment.start_worker(bootstrap=f"127.0.0.1:{port}")

        def violation_decided() -> bool:
            from tiergate.streams.kafka_replay import read_topic

            found = asyncio.run(read_topic(secure, DECISIONS))
            return any(orjson.loads(r.value)["kind"] == "violation" for r in found)

        wait_for(violation_decided, 60, "the worker's decision over SASL_SSL")
    finally:
        deployment.stop_all()
        os.environ.clear()
        os.environ.update(original)

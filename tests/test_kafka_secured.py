"""A secured cluster: SASL/SCRAM over TLS, on a second, secured listener of a local broker, with ACLs per role.

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
from aiokafka.errors import TopicAuthorizationFailedError

from tiergate.streams.kafka import (
    ACTIONS,
    DECISIONS,
    DEFAULT_TOPICS_FILE,
    DLQ,
    EVENTS,
    OUTCOMES,
    KafkaSettings,
    create_topics,
)
from tiergate.streams.kafka_replay import read_topic

from .kafka_harness import BROKER, ROOT, TEST_TOPICS, Deployment, kafka_ports, wait_for

pytestmark = pytest.mark.kafka
PASSWORD = "alice-secret"


def keytool(*args: str) -> None:
    subprocess.run(["keytool", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def secured_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, int]]:
    """A broker with PLAINTEXT (the admin step) and SASL_SSL listeners: (SASL_SSL port, CA file, PLAINTEXT port)."""
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
                # ACLs decide on the SASL_SSL listener; the PLAINTEXT one (the tests' admin step, the
                # controller) and alice (the test that predates the roles) are super users
                "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                "super.users=User:ANONYMOUS;User:alice",
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
        for user in ("alice", *ROLES):
            scram_user(plain, user, PASSWORD if user == "alice" else f"{user}-secret")
        yield secure, ca, plain
    finally:
        subprocess.run([str(BROKER), "stop"], env=env, cwd=ROOT)


ROLES = ("agent", "reporter", "worker", "operator")


def scram_user(plain: int, user: str, password: str) -> None:
    """SCRAM credentials through the admin API (AlterUserScramCredentials), over the PLAINTEXT listener."""
    subprocess.run(
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
            user,
            "--add-config",
            f"SCRAM-SHA-256=[iterations=4096,password={password}]",
        ],
        check=True,
        capture_output=True,
    )


def settings(port: int, ca: Path, prefix: str, password: str = PASSWORD, user: str = "alice") -> KafkaSettings:
    return KafkaSettings(
        bootstrap=f"127.0.0.1:{port}",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username=user,
        sasl_password=password,
        ssl_cafile=ca,
        topic_prefix=prefix,
        topics_file=DEFAULT_TOPICS_FILE,
    )


def test_topics_a_producer_and_a_worker_work_over_sasl_scram_and_tls(
    secured_broker: tuple[int, Path, int], tmp_path: Path
) -> None:
    """With SCRAM credentials and the CA, everything tiergate does on Kafka works over the secured listener;
    a wrong password is refused."""
    port, ca, _ = secured_broker
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


def test_an_agent_cannot_move_a_tier_under_the_roles_acls(
    secured_broker: tuple[int, Path, int], tmp_path: Path
) -> None:
    """With each role's ACLs (deploy/kafka/acls.sh) on the SASL_SSL listener and the worker running as the
    worker principal: the agent's produce to the events topic is refused by the broker, and so is its produce
    to the outcomes topic; an override it slips into the actions topic is set aside by the worker and moves
    nothing, while its action and the reporter's outcome are forwarded and folded; an operator may write
    the events topic."""
    port, ca, plain = secured_broker
    admin = KafkaSettings(bootstrap=f"127.0.0.1:{plain}", topic_prefix="acl.", topics_file=DEFAULT_TOPICS_FILE)
    asyncio.run(create_topics(admin, 1, TEST_TOPICS))
    for role in ROLES:
        acls = [str(ROOT / "deploy" / "kafka" / "acls.sh"), role, f"User:{role}", "--bootstrap", f"127.0.0.1:{plain}"]
        subprocess.run([*acls, "--prefix", "acl."], check=True, capture_output=True, cwd=ROOT)
    agent, reporter, operator = (
        settings(port, ca, "acl.", f"{role}-secret", role) for role in ("agent", "reporter", "operator")
    )

    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(_send(agent, EVENTS, PROMOTE))
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(_send(agent, OUTCOMES, REVIEW))
    asyncio.run(_send(operator, EVENTS, UNSIGNED))  # operators may write the log; unsigned, this does not count

    deployment = Deployment(tmp_path, prefix="acl.")
    worker = {
        "TIERGATE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "TIERGATE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "TIERGATE_KAFKA_SASL_USERNAME": "worker",
        "TIERGATE_KAFKA_SASL_PASSWORD": "worker-secret",
        "TIERGATE_KAFKA_SSL_CAFILE": str(ca),
        "TIERGATE_WORKER_TICKS": "false",  # the events are dated in the past: a clock tick would make them late
    }
    try:
        deployment.start_worker(bootstrap=f"127.0.0.1:{port}", env=worker)
        asyncio.run(_send(agent, ACTIONS, PROMOTE))  # the agent may write the actions topic: it tries
        asyncio.run(_send(agent, ACTIONS, ACTION))
        asyncio.run(_send(reporter, OUTCOMES, REVIEW))

        def judged() -> bool:
            kinds = [orjson.loads(r.value or b"")["kind"] for r in asyncio.run(read_topic(admin, DECISIONS))]
            return "violation" in kinds and any(v.value == REVIEW for v in asyncio.run(read_topic(admin, EVENTS)))

        wait_for(judged, 60, "the agent's action folded (a violation) and the reporter's outcome forwarded")
        wait_for(
            lambda: any(r.value == PROMOTE for r in asyncio.run(read_topic(admin, DLQ))), 30, "the override set aside"
        )
    finally:
        deployment.stop_all()
    kinds = [orjson.loads(r.value or b"")["kind"] for r in asyncio.run(read_topic(admin, DECISIONS))]
    assert "promote" not in kinds and "override" not in kinds
    assert PROMOTE not in {r.value for r in asyncio.run(read_topic(admin, EVENTS))}
    reasons = {r.value: dict(r.headers)["tiergate-reason"] for r in asyncio.run(read_topic(admin, DLQ))}
    assert b"takes actions only" in reasons[PROMOTE] and reasons[UNSIGNED].startswith(b"unsigned")


async def _send(kafka: KafkaSettings, topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(**kafka.client_kwargs())
    await producer.start()
    try:
        await producer.send_and_wait(kafka.topic(topic), value, key=b"reply_to_ticket")
    finally:
        await producer.stop()


def _event(**fields: str) -> bytes:
    return orjson.dumps({"ts": "2026-10-01T00:00:00Z", "action_type": "reply_to_ticket"} | fields)


PROMOTE = _event(type="override", event_id="p1", op="promote", actor="support-bot", reason="trust me")
ACTION = _event(type="action", event_id="a1/action", action_id="a1", tier="walk")  # above crawl: a violation
REVIEW = _event(type="outcome", event_id="a1/review", action_id="a1", tier="crawl", kind="review", result="accepted")
UNSIGNED = _event(type="override", event_id="o1", op="cap", tier="walk", actor="ops@example.com", reason="audit")

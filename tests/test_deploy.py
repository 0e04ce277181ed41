"""The deployment files agree with each other: what CI runs (deploy/kafka) is what Docker users run."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from tiergate.streams.kafka import DEFAULT_TOPICS_FILE, check_replication, read_topics

ROOT = Path(__file__).parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.kafka.yml").read_text())
BROKER_SCRIPT = (ROOT / "deploy" / "kafka" / "broker.sh").read_text()


def pinned_kafka_version() -> str:
    pom = ET.parse(ROOT / "deploy" / "kafka" / "pom.xml").getroot()
    version = pom.find("{http://maven.apache.org/POM/4.0.0}properties/{http://maven.apache.org/POM/4.0.0}kafka.version")
    assert version is not None and version.text
    return version.text


def broker_properties() -> dict[str, str]:
    block = BROKER_SCRIPT.split('cat > "$run/server.properties" <<EOF', 1)[1].split("\nEOF", 1)[0]
    return dict(line.split("=", 1) for line in block.strip().splitlines())


def test_compose_runs_the_kafka_version_that_deploy_pins() -> None:
    """The apache/kafka image tag is the Maven version of the local broker, a 4.x release."""
    assert COMPOSE["services"]["kafka"]["image"] == f"apache/kafka:{pinned_kafka_version()}"
    assert re.match(r"^4\.\d+\.\d+$", pinned_kafka_version())


def test_compose_broker_settings_match_the_local_broker() -> None:
    """Auto-create off, no initial rebalance delay, replication 1: the same broker settings in both places."""
    env = COMPOSE["services"]["kafka"]["environment"]
    local = broker_properties()
    for name in (
        "auto.create.topics.enable",
        "group.initial.rebalance.delay.ms",
        "offsets.topic.replication.factor",
        "offsets.topic.num.partitions",
        "transaction.state.log.replication.factor",
        "log.cleaner.backoff.ms",
    ):
        assert env["KAFKA_" + name.upper().replace(".", "_")] == local[name], name
    assert env["KAFKA_PROCESS_ROLES"] == local["process.roles"]


def test_compose_creates_the_topics_from_the_one_definition_before_the_worker_starts() -> None:
    """The topic step runs `tiergate topics create` on the packaged definition (no --definition: the image
    has no other); the worker waits for it."""
    topics, worker = COMPOSE["services"]["topics"], COMPOSE["services"]["worker"]
    assert topics["command"][:2] == ["topics", "create"] and "--definition" not in topics["command"]
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert worker["command"][0] == "worker" and (ROOT / worker["command"][2]).exists()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^COPY .*streams ", dockerfile, re.MULTILINE) and "'.[kafka]'" in dockerfile


def test_the_topic_definition_keeps_the_changelog_co_partitioned_and_the_tier_map_compacted() -> None:
    """A source/changelog partition mismatch crash-loops the worker; the tier map must compact."""
    topics = read_topics(DEFAULT_TOPICS_FILE)
    assert topics["tiergate-worker-state-changelog"].partitions == topics["tiergate.events.v1"].partitions
    assert topics["tiergate.tier-map.v1"].config["cleanup.policy"] == "compact"
    assert topics["tiergate.events.v1"].config["retention.ms"] == "-1"


def test_the_topic_definition_has_production_settings_and_a_single_broker_must_override_them() -> None:
    """Every topic keeps acknowledged writes on two replicas and no test-only compaction setting (segments
    rolled within seconds, a near-zero dirty ratio); creating them with one replica without overriding
    min.insync.replicas is refused with the fix."""
    topics = read_topics(DEFAULT_TOPICS_FILE)
    assert all(spec.config["min.insync.replicas"] == "2" for spec in topics.values())
    assert all(int(spec.config.get("segment.ms", 3600000)) >= 3600000 for spec in topics.values())
    assert not {"min.cleanable.dirty.ratio"} & {key for spec in topics.values() for key in spec.config}
    with pytest.raises(ValueError, match=r"min.insync.replicas=2 needs a replication factor of at least 2.*--config"):
        check_replication(topics, 1)
    check_replication(read_topics(DEFAULT_TOPICS_FILE, {"min.insync.replicas": "1"}), 1)
    command = COMPOSE["services"]["topics"]["command"]
    assert command[command.index("--config") + 1] == "min.insync.replicas=1"  # compose runs one broker


def test_prometheus_in_compose_scrapes_the_worker() -> None:
    """The mounted scrape config targets the worker's /metrics port."""
    mount = COMPOSE["services"]["prometheus"]["volumes"][0].split(":")[0]
    config = yaml.safe_load((ROOT / mount).read_text())
    target = config["scrape_configs"][0]["static_configs"][0]["targets"][0]
    assert target == f"worker:{COMPOSE['services']['worker']['environment']['TIERGATE_WORKER_WEB_PORT']}"


def k8s() -> dict[str, dict[str, Any]]:
    docs = [
        d for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(path.read_text())
    ]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def test_the_kubernetes_manifests_run_what_the_code_serves() -> None:
    """Probes hit /healthz on the ports the runtimes listen on; the policy in the ConfigMap loads; the
    server, bound beyond loopback, gets its token from a secret; the worker's web server binds the pod."""
    from tiergate.streams.policy_file import policy_from_mapping

    manifests = k8s()
    policy_from_mapping(yaml.safe_load(manifests["ConfigMap/tiergate-policy"]["data"]["policy.yaml"]))
    worker = manifests["Deployment/tiergate-worker"]["spec"]["template"]["spec"]["containers"][0]
    serve = manifests["StatefulSet/tiergate-serve"]["spec"]["template"]["spec"]["containers"][0]
    worker_env = {e["name"]: e.get("value") for e in worker["env"]}
    assert worker["args"][0] == "worker" and worker_env["TIERGATE_WORKER_WEB_HOST"] == "0.0.0.0"
    assert worker["ports"][0]["containerPort"] == int(worker_env["TIERGATE_WORKER_WEB_PORT"])
    assert serve["args"][0] == "serve" and "0.0.0.0" in serve["args"]
    assert any(e["name"] == "TIERGATE_TOKEN" and "secretKeyRef" in e["valueFrom"] for e in serve["env"])
    assert serve["ports"][0]["containerPort"] == int(serve["args"][serve["args"].index("--port") + 1])
    for container in (worker, serve):
        assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert manifests["StatefulSet/tiergate-serve"]["spec"]["replicas"] == 1  # one SQLite writer


def test_the_image_runs_unprivileged_on_absolute_data_dirs_it_owns() -> None:
    """The image's user owns /app and the data directories, every data dir is absolute (a relative one
    would land in root-owned /app), and everything copied in belongs to that user."""
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users == ["tiergate"]
    setup = " ".join(line for line in lines if not line.startswith("#"))
    assert re.search(r"chown -R tiergate:tiergate /app /var/lib/tiergate", setup)
    assert all("--chown=tiergate:tiergate" in line for line in lines if line.startswith("COPY "))
    env = dict(re.findall(r"(TIERGATE_[A-Z_]+)=(\S+)", setup))
    assert env["TIERGATE_DATA_DIR"].startswith("/var/lib/tiergate/")


def test_git_ignores_the_directories_the_commands_create_by_default() -> None:
    """The default data dirs of serve, import and the demo never end up in a commit (the worker keeps no
    files: its state is in Kafka)."""
    from tiergate.streams.cli import parser
    from tiergate.streams.settings import StoreSettings

    ignored = set((ROOT / ".gitignore").read_text().split())
    demo = parser().parse_args(["demo"]).data_dir
    defaults = [StoreSettings.model_fields["data_dir"].default, demo]
    for directory in map(str, defaults):
        assert f"{directory}/" in ignored, directory


def test_the_docs_stand_on_their_own() -> None:
    """README, docs/ and the code's docstrings never send a reader to files outside the project, and every
    relative link in the docs names a file that exists."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for page in pages:
        text = page.read_text()
        assert "../shared" not in text and "DESIGN.md" not in text and "STYLE.md" not in text, page
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), (page, target)
    sources = [*ROOT.glob("models/**/*.py"), *ROOT.glob("streams/**/*.py"), *ROOT.glob("streams/**/*.html")]
    for source in sources:
        text = source.read_text()
        assert "../shared" not in text and "DESIGN" not in text and "§" not in text, source
    readme = (ROOT / "README.md").read_text()
    for needed in ("events.md", "policy.md", "decision-rules.md", "embedded.md", "pip install './[kafka]'"):
        assert needed in readme, needed

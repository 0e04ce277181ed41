#!/usr/bin/env bash
# The Kafka ACLs of one tiergate role for one principal (docs/kafka-security.md), added with Kafka's own
# AclCommand (what kafka-acls.sh runs), on a cluster whose brokers run an authorizer.
#
#   deploy/kafka/acls.sh ROLE PRINCIPAL [--bootstrap HOST:PORT] [--command-config FILE] [--prefix PREFIX]
#                        [--app-id APP_ID] [--dry-run]
#
# ROLE is one of:
#   agent     writes actions to tiergate.actions.v1; reads the tier map
#   reporter  writes outcomes and checkpoints to tiergate.outcomes.v1; reads the tier map
#   worker    reads the ingress topics and the events topic, writes the events topic (forwarded input, ticks),
#             the decisions, the tier map, the rejected input and its state changelog; its consumer groups
#             (APP_ID, APP_ID-forward) and the forwarding transactions (APP_ID-forward-*)
#   operator  writes the events topic (signed overrides and policy events) and the policies topic; reads
#             every tiergate topic (replay --from-kafka --verify)
#   reader    reads the tier map and the decisions
# PRINCIPAL is Kafka's, e.g. User:agent-fleet. --prefix is TIERGATE_KAFKA_TOPIC_PREFIX; --app-id the workers'
# TIERGATE_WORKER_APP_ID (tiergate-worker). --bootstrap defaults to 127.0.0.1:$TIERGATE_KAFKA_PORT (19092).
# KAFKA_ACLS may name a kafka-acls.sh of your Kafka distribution; by default the jars deploy/kafka fetched
# are used (run `deploy/kafka/broker.sh fetch` first). --dry-run prints the commands instead.
set -euo pipefail

role=${1:?"usage: $0 ROLE PRINCIPAL [options] (see the top of this file)"}
principal=${2:?"usage: $0 ROLE PRINCIPAL [options]"}
shift 2
bootstrap="127.0.0.1:${TIERGATE_KAFKA_PORT:-19092}" config="" prefix="" app="tiergate-worker" dry=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bootstrap) bootstrap=$2; shift 2 ;;
        --command-config) config=$2; shift 2 ;;
        --prefix) prefix=$2; shift 2 ;;
        --app-id) app=$2; shift 2 ;;
        --dry-run) dry=1; shift ;;
        *) echo "acls.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

here=$(cd "$(dirname "$0")" && pwd)
acls() {
    local command
    if [ -n "${KAFKA_ACLS:-}" ]; then command=("$KAFKA_ACLS")
    else command=(java -cp "$here/target/jars/*" org.apache.kafka.tools.AclCommand); fi
    command+=(--bootstrap-server "$bootstrap" --add --allow-principal "$principal" --force)
    if [ -n "$config" ]; then command+=(--command-config "$config"); fi
    if [ -n "$dry" ]; then echo "${command[@]}" "$@"; else "${command[@]}" "$@" >/dev/null; fi
}
topics() { local out=(); for t in "$@"; do out+=(--topic "$prefix$t"); done; echo "${out[@]}"; }

case "$role" in
    agent)
        acls --operation Write --operation Describe $(topics tiergate.actions.v1)
        acls --operation Read --operation Describe $(topics tiergate.tier-map.v1) ;;
    reporter)
        acls --operation Write --operation Describe $(topics tiergate.outcomes.v1)
        acls --operation Read --operation Describe $(topics tiergate.tier-map.v1) ;;
    worker)
        acls --operation Read --operation Describe \
            $(topics tiergate.actions.v1 tiergate.outcomes.v1 tiergate.events.v1 "$app-state-changelog")
        acls --operation Write --operation Describe $(topics tiergate.events.v1 tiergate.decisions.v1 \
            tiergate.tier-map.v1 tiergate.events.v1.dlq "$app-state-changelog")
        acls --operation Read --operation Describe --group "$prefix$app" --group "$prefix$app-forward"
        acls --operation Write --operation Describe --transactional-id "$prefix$app-forward-" \
            --resource-pattern-type prefixed ;;
    operator)
        acls --operation Write --operation Describe $(topics tiergate.events.v1 tiergate.policies.v1)
        acls --operation Read --operation Describe $(topics tiergate.events.v1 tiergate.decisions.v1 \
            tiergate.tier-map.v1 tiergate.events.v1.dlq tiergate.policies.v1 "$app-state-changelog") ;;
    reader)
        acls --operation Read --operation Describe $(topics tiergate.tier-map.v1 tiergate.decisions.v1) ;;
    *) echo "acls.sh: unknown role $role (agent, reporter, worker, operator, reader)" >&2; exit 2 ;;
esac

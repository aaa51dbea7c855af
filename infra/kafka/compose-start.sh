#!/usr/bin/env bash
# Entry point of a Kafka node in infra/compose.yaml, in place of the image's own.
# 1. Fill infra/kafka/compose-server.properties with this node's id and its passwords (from kafka.env).
# 2. Format the node's storage once, creating the SCRAM users: `broker` (between brokers) and `whistle`
#    (every Whistle client, WHISTLE_KAFKA_SASL_USERNAME). A formatted volume is left as it is: change or add
#    users on a running cluster with kafka-configs.sh --alter --add-config 'SCRAM-SHA-512=[password=...]'.
# 3. Run the node.
# Passwords are letters and digits only: they are written into a properties file and a --add-scram argument.
set -euo pipefail
: "${KAFKA_NODE_ID:?}" "${CLUSTER_ID:?}" "${BROKER_SASL_PASSWORD:?}" "${BROKER_KEYSTORE_PASSWORD:?}" "${WHISTLE_KAFKA_SASL_PASSWORD:?}"
properties=/opt/kafka/config/whistle.properties
sed -e "s|@NODE_ID@|${KAFKA_NODE_ID}|g" -e "s|@BROKER_SASL_PASSWORD@|${BROKER_SASL_PASSWORD}|g" \
    -e "s|@BROKER_KEYSTORE_PASSWORD@|${BROKER_KEYSTORE_PASSWORD}|g" /opt/whistle/compose-server.properties > "$properties"
chmod 600 "$properties"
/opt/kafka/bin/kafka-storage.sh format --ignore-formatted --cluster-id "$CLUSTER_ID" --config "$properties" \
    --add-scram "SCRAM-SHA-512=[name=broker,password=${BROKER_SASL_PASSWORD}]" \
    --add-scram "SCRAM-SHA-512=[name=whistle,password=${WHISTLE_KAFKA_SASL_PASSWORD}]"
exec /opt/kafka/bin/kafka-server-start.sh "$properties"

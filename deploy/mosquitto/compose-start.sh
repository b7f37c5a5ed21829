#!/bin/sh
# Starts Mosquitto with the AVL ingest user from MQTT_USER/MQTT_PASSWORD (compose .env) added to
# the password file on the data volume (device accounts added there are kept).
set -eu
: "${MQTT_PASSWORD:?set MQTT_PASSWORD in deploy/compose/.env}"
passwd=/mosquitto/data/passwd
[ -f "$passwd" ] || : > "$passwd"
mosquitto_passwd -b "$passwd" "${MQTT_USER:-avl}" "$MQTT_PASSWORD"
chown mosquitto:mosquitto "$passwd" /mosquitto/data
chmod 0600 "$passwd"
exec mosquitto -c /mosquitto/config/mosquitto.conf

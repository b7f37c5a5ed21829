#!/usr/bin/env bash
# Installs the AVL server on a plain Debian 12 (bookworm) host, as root, from this source tree:
# Debian's PostgreSQL and Mosquitto, nginx as the TLS-terminating proxy, the server in a virtual
# environment under /opt/avl, the settings in /etc/avl/avl.env, and systemd units for
# several ingest processes, two diagnostics workers and two API processes.
#
#   sudo deploy/debian/install.sh                      # install, or upgrade in place
#   sudo INGEST_PROCESSES=4 deploy/debian/install.sh   # options below, as environment variables
#
# Options:
#   INGEST_PROCESSES       ingest processes (default: the number of cores)
#   API_PROCESSES          API processes (default 2; ports 8081..; nginx's upstream lists 8081, 8082)
#   DIAGNOSTICS_PROCESSES  diagnostics workers (default 2; one sweeps at a time)
#   AVL_DOMAIN             the API's public name, for the self-signed certificate (default: hostname -f)
#   DESTDIR                stage the files under this directory and change nothing else (no
#                          packages, users, database, services): what tests/deploy runs
#
# Re-running it upgrades the code and keeps /etc/avl/avl.env, the passwords, the database and
# the spools. Every step says what it does.
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEPLOY="$SRC/deploy"
DESTDIR="${DESTDIR:-}"
INGEST_PROCESSES="${INGEST_PROCESSES:-$(nproc)}"
API_PROCESSES="${API_PROCESSES:-2}"
DIAGNOSTICS_PROCESSES="${DIAGNOSTICS_PROCESSES:-2}"
AVL_DOMAIN="${AVL_DOMAIN:-$(hostname -f 2>/dev/null || hostname)}"
PREFIX=/opt/avl
ETC=/etc/avl

step() { printf '==> %s\n' "$*"; }
staged() { [ -n "$DESTDIR" ]; }
# Runs a command that changes the system, or says it would when staging.
run() {
    if staged; then
        printf '    (staged, not run) %s\n' "$*"
    else
        "$@"
    fi
}
secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }
# Value of KEY in an env file (the part after the first '=').
env_value() { sed -n "s/^$1=//p" "$2" | tail -n 1; }

if ! staged && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (or with DESTDIR=... to stage the files only)" >&2
    exit 1
fi
for n in "$INGEST_PROCESSES" "$API_PROCESSES" "$DIAGNOSTICS_PROCESSES"; do
    case "$n" in ''|*[!0-9]*|0) echo "install.sh: process counts must be positive integers" >&2; exit 2 ;; esac
done

step "Debian packages: PostgreSQL, Mosquitto, nginx, Python"
run env DEBIAN_FRONTEND=noninteractive apt-get update -q
run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql mosquitto mosquitto-clients nginx \
    python3 python3-venv python3-pip openssl ca-certificates

step "System user 'avl'"
if ! staged && ! id avl >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/avl --shell /usr/sbin/nologin avl
fi
install -d -m 0755 "$DESTDIR$PREFIX" "$DESTDIR$PREFIX/src"
install -d -m 0750 "$DESTDIR/var/lib/avl"
run chown avl:avl /var/lib/avl

step "The AVL server in $PREFIX/venv (from $SRC)"
# A copy of the source next to the code (the units' Documentation= points into it).
tar -C "$SRC" --exclude=.git --exclude=.venv --exclude=var --exclude='__pycache__' \
    -cf - pyproject.toml README.md avl ingest diagnostics api simulators deploy | tar -C "$DESTDIR$PREFIX/src" -xf -
run python3 -m venv "$PREFIX/venv"
run "$PREFIX/venv/bin/pip" install -q --upgrade pip
run "$PREFIX/venv/bin/pip" install -q "$PREFIX/src"

step "Settings: $ETC/avl.env"
install -d -m 0750 "$DESTDIR$ETC" "$DESTDIR$ETC/tls"
run chown root:avl "$ETC" "$ETC/tls"
envfile="$DESTDIR$ETC/avl.env"
if [ -f "$envfile" ]; then
    echo "    kept (new settings, if any, are in $DEPLOY/avl.env.example)"
else
    db_password="$(secret)"
    mqtt_password="$(secret)"
    sed -e "s#^AVL_DATABASE_URL=.*#AVL_DATABASE_URL=postgresql://avl:${db_password}@127.0.0.1:5432/avl#" \
        -e "s#^AVL_MQTT_URL=.*#AVL_MQTT_URL=mqtt://avl:${mqtt_password}@127.0.0.1:1883#" \
        "$DEPLOY/avl.env.example" > "$envfile"
    chmod 0640 "$envfile"
    echo "    created with generated database and MQTT passwords"
fi
run chown root:avl "$ETC/avl.env"
db_password="$(env_value AVL_DATABASE_URL "$envfile" | sed -n 's#^postgresql://avl:\([^@]*\)@.*#\1#p')"
mqtt_password="$(env_value AVL_MQTT_URL "$envfile" | sed -n 's#^mqtt://avl:\([^@]*\)@.*#\1#p')"
if [ -z "$db_password" ] || [ -z "$mqtt_password" ]; then
    echo "install.sh: $ETC/avl.env: AVL_DATABASE_URL and AVL_MQTT_URL must be postgresql://avl:<password>@... and mqtt://avl:<password>@..." >&2
    exit 2
fi

step "Kernel settings: /etc/sysctl.d/60-avl.conf"
install -D -m 0644 "$DEPLOY/debian/sysctl-avl.conf" "$DESTDIR/etc/sysctl.d/60-avl.conf"
run sysctl -q -p /etc/sysctl.d/60-avl.conf

step "PostgreSQL: role and database 'avl', settings in conf.d/avl.conf"
pg_version="15"
if ! staged; then
    pg_version="$(pg_lsclusters -h | awk 'NR==1 {print $1}')"
fi
install -D -m 0644 "$DEPLOY/debian/postgresql-avl.conf" "$DESTDIR/etc/postgresql/$pg_version/main/conf.d/avl.conf"
if ! staged; then
    systemctl restart "postgresql@$pg_version-main"
    runuser -u postgres -- psql -v ON_ERROR_STOP=1 -q -v pw="$db_password" <<'SQL'
SELECT format('CREATE ROLE avl LOGIN PASSWORD %L', :'pw') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'avl')
\gexec
SELECT format('ALTER ROLE avl LOGIN PASSWORD %L', :'pw')
\gexec
SELECT 'CREATE DATABASE avl OWNER avl' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'avl')
\gexec
SQL
else
    echo "    (staged, not run) create role and database avl"
fi

step "Mosquitto: /etc/mosquitto/conf.d/avl.conf, ACL, the ingest user"
install -D -m 0644 "$DEPLOY/mosquitto/debian.conf" "$DESTDIR/etc/mosquitto/conf.d/avl.conf"
install -D -m 0644 "$DEPLOY/mosquitto/acl" "$DESTDIR/etc/mosquitto/avl.acl"
passwd_file="$DESTDIR/etc/mosquitto/avl.passwd"
[ -f "$passwd_file" ] || install -m 0600 /dev/null "$passwd_file"
if ! staged; then
    mosquitto_passwd -b "$passwd_file" avl "$mqtt_password"
    chown mosquitto:mosquitto "$passwd_file"
    chmod 0600 "$passwd_file"
    systemctl restart mosquitto
else
    echo "    (staged, not run) mosquitto_passwd -b /etc/mosquitto/avl.passwd avl ***"
fi

step "nginx: /etc/nginx/sites-available/avl (TLS on 443, the API processes behind it)"
install -D -m 0644 "$DEPLOY/nginx/avl.conf" "$DESTDIR/etc/nginx/sites-available/avl"
install -d "$DESTDIR/etc/nginx/sites-enabled"
ln -sfn ../sites-available/avl "$DESTDIR/etc/nginx/sites-enabled/avl"
rm -f "$DESTDIR/etc/nginx/sites-enabled/default"  # it is the default_server on 80 too
if [ ! -f "$DESTDIR$ETC/tls/fullchain.pem" ]; then
    echo "    no certificate in $ETC/tls: a self-signed one for $AVL_DOMAIN (replace it with a real one)"
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=$AVL_DOMAIN" \
        -keyout "$DESTDIR$ETC/tls/privkey.pem" -out "$DESTDIR$ETC/tls/fullchain.pem" 2>/dev/null
    chmod 0640 "$DESTDIR$ETC/tls/privkey.pem"
fi
run nginx -t -q
run systemctl reload-or-restart nginx

step "systemd units: $INGEST_PROCESSES ingest, $DIAGNOSTICS_PROCESSES diagnostics, $API_PROCESSES API"
units="$DESTDIR/etc/systemd/system"
install -d "$units"
for unit in "$DEPLOY"/debian/systemd/*; do
    install -m 0644 "$unit" "$units/"
done
run systemctl daemon-reload
# Instances are named by their port (see the units). Disable instances beyond the counts asked for.
wanted=(avl-migrate.service)
for ((i = 0; i < INGEST_PROCESSES; i++)); do wanted+=("avl-ingest@$((9108 + i)).service"); done
for ((i = 0; i < DIAGNOSTICS_PROCESSES; i++)); do wanted+=("avl-diagnostics@$((9118 + i)).service"); done
for ((i = 0; i < API_PROCESSES; i++)); do wanted+=("avl-api@$((8081 + i)).service"); done
if ! staged; then
    for old in /etc/systemd/system/avl.target.wants/avl-*@*.service; do
        [ -e "$old" ] || [ -L "$old" ] || continue
        name="$(basename "$old")"
        keep=no
        for w in "${wanted[@]}"; do [ "$w" = "$name" ] && keep=yes; done
        [ "$keep" = yes ] || systemctl disable --now "$name"
    done
    systemctl enable avl.target "${wanted[@]}"
    systemctl restart avl.target
else
    install -d "$units/avl.target.wants"
    for name in "${wanted[@]}"; do
        template="${name/@*./@.}"
        ln -sfn "../$template" "$units/avl.target.wants/$name"
    done
    echo "    (staged, not run) systemctl enable avl.target ${wanted[*]}; systemctl restart avl.target"
fi

step "Done"
cat <<EOF
    Settings:     $ETC/avl.env (restart after a change: systemctl restart avl.target)
    API:          https://$AVL_DOMAIN/  (health: curl -k https://127.0.0.1/health)
    Processes:    systemctl list-units 'avl-*'
    Logs:         journalctl -u 'avl-ingest@*' -f
    Metrics:      http://127.0.0.1:9108/metrics ... (one port per ingest process)
    Admin token:  sudo -u avl sh -c 'set -a; . $ETC/avl.env; exec $PREFIX/venv/bin/avl token create --role admin'
EOF
if [ "$INGEST_PROCESSES" -gt 3 ]; then
    echo "    Note: deploy/prometheus/prometheus.yml scrapes ports 9108-9110; add 9111.. for the other ingest processes."
fi

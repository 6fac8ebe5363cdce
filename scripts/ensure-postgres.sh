#!/usr/bin/env bash
# Ensure PostgreSQL accepts `psql -h 127.0.0.1 -U postgres -c 'select 1'`.
#
# Idempotent; does nothing when that already works. Otherwise (Debian/Ubuntu
# packaging, needs root or password-less sudo):
#   0. when a server already answers on the port (in a container, say) but psql
#      is missing, installs the client only (`postgresql-client`), never a
#      second server whose cluster would land on another port,
#   1. installs the `postgresql` package if nothing answers on the port and no
#      server is installed,
#   2. creates a cluster on the port if none exists, starts it if it is down
#      (pg_ctlcluster --skip-systemctl-redirect: works without systemd),
#   3. if the server runs but refuses the login, adds `trust` entries for
#      127.0.0.1/::1 (users postgres and the invoking user) at the top of
#      pg_hba.conf, creates the invoking user's role, and reloads.
# Local development only: trust auth on loopback is not for shared machines.
#
# The tests that start a server of their own (TLS, scram passwords, stopped and
# started by the test: tests/it/support/own_pg.rs) use this installation's
# initdb and pg_ctl, and openssl for their certificates; step 0 makes sure
# openssl is there (the postgresql package usually brings it). With
# --server-tools (scripts/test.sh) it also makes sure initdb and pg_ctl are
# installed when the server that answers is not this machine's own (a
# container, the host of a chroot): the server package is installed without
# creating a cluster, so nothing starts beside the server that answers.
#
# Environment: POSTGRES_PORT (default 5432).
set -euo pipefail

server_tools=0
for arg in "$@"; do
    case "$arg" in
        --server-tools) server_tools=1 ;;
        *) echo "ensure-postgres: unknown argument '$arg'" >&2; exit 2 ;;
    esac
done

HOST=127.0.0.1
PORT="${POSTGRES_PORT:-5432}"
MARK="# added by datapack-worker scripts/ensure-postgres.sh"

log() { echo "ensure-postgres: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# shellcheck source=SCRIPTDIR/lib/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

connect_error=""
can_connect() {
    command -v psql >/dev/null 2>&1 || { connect_error="psql is not installed"; return 1; }
    connect_error="$(PGCONNECT_TIMEOUT=5 psql -h "$HOST" -p "$PORT" -U postgres -d postgres \
        -XqtAw -c 'select 1' 2>&1 >/dev/null)" && return 0
    return 1
}

as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        die "'$*' needs root (run as root or configure password-less sudo)"
    fi
}

as_postgres() {
    if [[ "$(id -un)" == postgres ]]; then
        (cd / && "$@")
    elif [[ "$(id -u)" -eq 0 ]] && command -v runuser >/dev/null 2>&1; then
        (cd / && runuser -u postgres -- "$@")
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        (cd / && sudo -n -u postgres "$@")
    else
        die "'$*' must run as OS user postgres (run as root or configure password-less sudo)"
    fi
}

# psql as the postgres OS user over the Unix socket (peer/trust auth).
psql_local() { as_postgres psql -p "$PORT" -d postgres -XqtA -v ON_ERROR_STOP=1 "$@"; }

# --- 0. openssl, for the tests' own servers' certificates -------------------
if ! command -v openssl >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "openssl is not installed and apt-get is unavailable"
    log "installing openssl with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl >&2 \
        || die "apt-get install openssl failed"
fi

# --- 0. the server's tools without a cluster (--server-tools) ---------------
# Debian's server package creates and starts a cluster when it is installed, unless
# createcluster.conf says not to: say so for this install only, then put the file back.
if ((server_tools)) && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    log "installing PostgreSQL's server tools (initdb, pg_ctl) for the tests' own servers, without a cluster"
    apt_ensure postgresql-common || die "cannot install postgresql-common"
    conf=/etc/postgresql-common/createcluster.conf
    saved="$(mktemp)"
    as_root cp "$conf" "$saved"
    as_root sed -i 's/^[#[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' "$conf"
    grep -q '^create_main_cluster = false' "$conf" \
        || echo 'create_main_cluster = false' | as_root tee -a "$conf" >/dev/null
    installed=0
    apt_ensure postgresql && installed=1
    as_root cp "$saved" "$conf"
    rm -f "$saved"
    ((installed)) || die "cannot install the PostgreSQL server package (initdb, pg_ctl)"
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
        || die "postgresql installed but no initdb under /usr/lib/postgresql/*/bin"
fi

if can_connect; then
    log "ok: PostgreSQL on $HOST:$PORT accepts user postgres"
    exit 0
fi
log "cannot connect to $HOST:$PORT as postgres (${connect_error:-no details}); trying to fix"

# Whether anything accepts TCP connections on the port (bash's /dev/tcp: no client needed).
port_answers() {
    # shellcheck disable=SC2016 # expanded by the inner bash, from its arguments
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$HOST" "$PORT" 2>/dev/null
}
server_installed() {
    command -v pg_lsclusters >/dev/null 2>&1 \
        && compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

# --- 0. a server answers: the client is all that is missing ------------------
if port_answers; then
    if ! command -v psql >/dev/null 2>&1; then
        log "a server answers on $HOST:$PORT; installing the PostgreSQL client only"
        apt_ensure postgresql-client || die "cannot install postgresql-client (psql)"
        if can_connect; then
            log "ok: PostgreSQL on $HOST:$PORT accepts user postgres"
            exit 0
        fi
    fi
    server_installed || die "the server on $HOST:$PORT refuses user postgres (${connect_error:-no details}), and it is not one this machine's packages manage (a container?): allow user postgres to log in from $HOST without a password (trust) there"
fi

# --- 1. install -----------------------------------------------------------
if ! server_installed; then
    log "nothing answers on $HOST:$PORT; installing the PostgreSQL server"
    apt_ensure postgresql \
        || die "PostgreSQL is not running and cannot be installed; install PostgreSQL >= 13 listening on $HOST:$PORT with trust auth for user postgres"
    server_installed || die "postgresql installed but no server binaries found under /usr/lib/postgresql"
fi

# --- 2. cluster on $PORT: create / start -----------------------------------
cluster_on_port() {
    pg_lsclusters --no-header 2>/dev/null | awk -v p="$PORT" '$3 == p { print $1, $2, $4; exit }'
}
read -r ver name status < <(cluster_on_port || true) || true
if [[ -z "${ver:-}" ]]; then
    ver="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -n | tail -n 1)"
    name=main
    [[ -e "/etc/postgresql/$ver/$name" ]] \
        && die "no PostgreSQL cluster uses port $PORT, and cluster $ver/$name already exists on another port (see pg_lsclusters)"
    log "creating cluster $ver/$name on port $PORT"
    as_root pg_createcluster -p "$PORT" "$ver" "$name" >&2 || die "pg_createcluster $ver $name failed"
    status=down
fi
if [[ "$status" != online* ]]; then
    log "starting cluster $ver/$name"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start >&2 \
        || die "pg_ctlcluster $ver $name start failed; see /var/log/postgresql/postgresql-$ver-$name.log"
fi

for _ in $(seq 1 60); do
    pg_isready -q -h "$HOST" -p "$PORT" && break
    sleep 0.5
done
pg_isready -q -h "$HOST" -p "$PORT" \
    || die "cluster $ver/$name is not accepting connections on $HOST:$PORT after 30s; see /var/log/postgresql/postgresql-$ver-$name.log (is listen_addresses set?)"

if can_connect; then
    log "ok: PostgreSQL $ver/$name on $HOST:$PORT accepts user postgres"
    exit 0
fi

# --- 3. authentication ------------------------------------------------------
log "server is up but refuses the login (${connect_error}); configuring trust auth on loopback"
hba_file="$(psql_local -c 'show hba_file')" \
    || die "cannot reach the server as OS user postgres over the Unix socket to fix authentication"
me="$(id -un)"
users=postgres
if [[ "$me" != postgres ]]; then
    users="postgres,$me"
    psql_local -v role="$me" <<'SQL' || die "cannot create role $me"
SELECT format('CREATE ROLE %I SUPERUSER LOGIN', :'role')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SQL
fi
if ! as_root grep -qF "$MARK" "$hba_file"; then
    tmp="$(mktemp)"
    {
        echo "$MARK"
        echo "host    all    $users    127.0.0.1/32    trust"
        echo "host    all    $users    ::1/128         trust"
        as_root cat "$hba_file"
    } >"$tmp"
    as_root cp "$tmp" "$hba_file"
    rm -f "$tmp"
    log "added trust entries for $users to $hba_file"
fi
psql_local -c 'select pg_reload_conf()' >/dev/null || die "cannot reload the server configuration"

for _ in $(seq 1 20); do
    can_connect && { log "ok: PostgreSQL $ver/$name on $HOST:$PORT accepts user postgres"; exit 0; }
    sleep 0.5
done
die "still cannot connect to $HOST:$PORT as postgres: ${connect_error}"

# shellcheck shell=bash
# Shared by scripts/run, scripts/test and scripts/benchmark: find or make what the project needs
# on this machine. Sourced, not run. Everything it starts is stopped by cleanup() on exit,
# Ctrl-C or SIGTERM, newest first (the worker finishes before the Redis it talks to stops).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
LOCAL="${GENERATOR_LOCAL_DIR:-$ROOT/.local}"
mkdir -p "$LOCAL"
# Left by earlier versions of these scripts: one log per run and a whole PostgreSQL cluster.
rm -rf "$LOCAL/postgres" "$LOCAL"/redis-*.log
# What cleanup() undoes, in the order it was done: shell commands, run newest first.
CLEANUP_COMMANDS=()

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf '\033[31mError: %s\033[0m\n' "$*" >&2; exit 1; }
in_ci() { [ "${CI:-}" = "true" ] || [ "${CI:-}" = "1" ]; }

on_cleanup() { CLEANUP_COMMANDS+=("$1"); }

cleanup() {
  local i
  for ((i = ${#CLEANUP_COMMANDS[@]} - 1; i >= 0; i--)); do
    eval "${CLEANUP_COMMANDS[i]}" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Stop a process this script started and wait until it is gone (TERM, then KILL after 30 s).
stop_process() {
  local pid="$1" _
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

# A private folder for this run's servers, removed on exit: nothing piles up between runs.
RUN_DIR=""
run_dir() {
  if [ -z "$RUN_DIR" ]; then
    RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/generator-run.XXXXXX")"
    on_cleanup "rm -rf '$RUN_DIR'"
  fi
}

# --- System packages --------------------------------------------------------------------------
# Each check below adds what this machine lacks; install_missing installs them all at once, or
# stops with one line that names them and the command that installs them.
MISSING_DEBIAN=()
MISSING_BREW=()
need_package() { MISSING_DEBIAN+=("$1"); MISSING_BREW+=("$2"); }

can_be_root() {
  [ "$(id -u)" = "0" ] && return 0
  command -v sudo >/dev/null 2>&1 || return 1
  # A password prompt needs a terminal; CI and pipes have none.
  sudo -n true 2>/dev/null || [ -t 0 ]
}
as_root() { if [ "$(id -u)" = "0" ]; then "$@"; else sudo "$@"; fi; }

install_missing() {
  [ ${#MISSING_DEBIAN[@]} -gt 0 ] || return 0
  local debian="${MISSING_DEBIAN[*]}" brew="${MISSING_BREW[*]}" script
  script="${0##*/}"
  if command -v apt-get >/dev/null 2>&1; then
    if ! can_be_root; then
      die "this machine lacks $debian: install them as root with 'apt-get install -y $debian' (or 'sudo apt-get install -y $debian'), then run scripts/$script again."
    fi
    say "Installing $debian with apt (once)"
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends)
    # A fresh machine has no package lists yet: update only when the first try fails.
    if ! as_root "${apt[@]}" "${MISSING_DEBIAN[@]}" >/dev/null 2>&1; then
      as_root apt-get update -q >/dev/null 2>&1 || die "apt-get update failed: check the network, then run scripts/$script again."
      as_root "${apt[@]}" "${MISSING_DEBIAN[@]}" >/dev/null ||
        die "apt-get could not install $debian: run 'apt-get install -y $debian' as root to see why."
    fi
  elif command -v brew >/dev/null 2>&1; then
    say "Installing $brew with Homebrew (once)"
    # shellcheck disable=SC2086 # one word per package
    brew install $brew || die "Homebrew could not install $brew: run 'brew install $brew' to see why."
  else
    die "this machine lacks $debian: install them with your package manager, then run scripts/$script again."
  fi
  MISSING_DEBIAN=()
  MISSING_BREW=()
}

# --- Python and the virtual environment -------------------------------------------------------
python_is_recent() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3 python; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 && python_is_recent "$candidate"; then
      command -v "$candidate"; return
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    for candidate in "$(pyenv root)"/versions/3.1[3-9]*/bin/python3 "$(pyenv root)"/versions/3.12*/bin/python3; do
      if [ -x "$candidate" ] && python_is_recent "$candidate"; then echo "$candidate"; return; fi
    done
  fi
  die "Python 3.12 or newer is needed (Django 6.1): install it (e.g. 'apt-get install python3' or 'pyenv install 3.13') and run this again, or set PYTHON=/path/to/python3.13."
}

# A venv counts only once its requirements went in (the stamp): a half-made one is rebuilt.
venv_is_ready() {
  [ -x "$VENV/bin/python" ] && python_is_recent "$VENV/bin/python" &&
    "$VENV/bin/python" -c 'import pip' 2>/dev/null
}

PYTHON_FOR_VENV=""
check_python() {
  venv_is_ready && return 0
  PYTHON_FOR_VENV="$(find_python)"
  # Debian and Ubuntu ship venv's pip bootstrap (ensurepip) as a package of its own.
  if ! "$PYTHON_FOR_VENV" -c 'import ensurepip' 2>/dev/null; then
    local version
    version="$("$PYTHON_FOR_VENV" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    need_package "python$version-venv" "python@$version"
  fi
}

requirements_checksum() { cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" | cksum; }

# A virtual environment with the pinned requirements; reinstalled only when they change.
ensure_venv() {
  if ! venv_is_ready; then
    [ -n "$PYTHON_FOR_VENV" ] || PYTHON_FOR_VENV="$(find_python)"
    say "Creating a virtual environment with $("$PYTHON_FOR_VENV" --version)"
    rm -rf "$VENV"
    if ! "$PYTHON_FOR_VENV" -m venv "$VENV" >"$LOCAL/venv.log" 2>&1; then
      rm -rf "$VENV"
      die "'$PYTHON_FOR_VENV -m venv' failed: $(tail -n 3 "$LOCAL/venv.log" | tr '\n' ' ')"
    fi
  fi
  local stamp="$VENV/.requirements-stamp" wanted
  wanted="$(requirements_checksum)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    say "Installing the locked requirements from PyPI (about 90 MB the first time)"
    rm -f "$stamp"
    # The lock names every package with its hashes: nothing else, and nothing altered, goes in.
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --require-hashes \
      -r "$ROOT/requirements-dev.txt" ||
      die "pip could not install the requirements (see above); run this again once that is fixed."
    echo "$wanted" > "$stamp"
  fi
  export PATH="$VENV/bin:$PATH"
}

# The laptop's settings: a private, git-ignored .env with a random secret key and debug mode,
# written once. The settings read it; what the environment sets wins over it.
ensure_env_file() {
  local env_file="${GENERATOR_ENV_FILE:-$ROOT/.env}" key
  [ -f "$env_file" ] && return 0
  key="$("$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(50))')"
  say "Writing $env_file (a random DJANGO_SECRET_KEY, DJANGO_DEBUG=true) for this machine"
  (umask 077 && printf 'DJANGO_SECRET_KEY=%s\nDJANGO_DEBUG=true\n' "$key" > "$env_file")
}

# --- Redis ------------------------------------------------------------------------------------
# Answers PING on host:port? Plain bash, so it works before the virtual environment exists.
tcp_redis_answers() {
  local reply=""
  { exec 3<>"/dev/tcp/$1/$2"; } 2>/dev/null || return 1
  printf 'PING\r\n' >&3
  read -r -t 2 reply <&3 || true
  exec 3>&-
  [[ "$reply" == +PONG* ]]
}

redis_answers() {
  "$VENV/bin/python" - "$1" <<'PY' 2>/dev/null
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1, socket_timeout=2).ping()
PY
}

free_port() {
  "$VENV/bin/python" - "${1:-0}" <<'PY'
import socket, sys
with socket.socket() as s:
    s.bind(("127.0.0.1", int(sys.argv[1])))
    print(s.getsockname()[1])
PY
}

check_redis_server() {
  command -v redis-server >/dev/null 2>&1 || need_package redis-server redis
}

# Start a private, throwaway redis-server (no persistence); its URL goes in PRIVATE_REDIS_URL.
# Daemonized: a Ctrl-C in the terminal reaches the worker, not the Redis it is still using.
start_private_redis() {
  run_dir
  local port pidfile="$RUN_DIR/redis.pid" _
  port="$(free_port)"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --pidfile "$pidfile" --dir "$RUN_DIR" --logfile "$RUN_DIR/redis.log" >/dev/null
  on_cleanup "[ -f '$pidfile' ] && stop_process \"\$(cat '$pidfile')\""
  local url="redis://127.0.0.1:$port/0"
  for _ in $(seq 50); do redis_answers "$url" && { PRIVATE_REDIS_URL="$url"; return; }; sleep 0.1; done
  die "the private redis-server on port $port did not start: $(tail -n 2 "$RUN_DIR/redis.log" | tr '\n' ' ')"
}

# Whether a Redis must be started (and so redis-server installed) for a local run.
check_redis_for_run() {
  [ -n "${REDIS_URL:-}" ] && return 0
  tcp_redis_answers 127.0.0.1 6379 || check_redis_server
}

# Sets REDIS_URL: the one given, else a Redis on localhost:6379, else a private one.
ensure_redis() {
  if [[ "${REDIS_URL:-}" == redis-sentinel://* ]]; then
    say "Using the Redis that the sentinels at REDIS_URL name as master"
  elif [ -n "${REDIS_URL:-}" ]; then
    redis_answers "$REDIS_URL" || die "REDIS_URL is set but no Redis answers there: $REDIS_URL"
    say "Using the Redis at REDIS_URL"
  elif redis_answers "redis://127.0.0.1:6379/0"; then
    export REDIS_URL="redis://127.0.0.1:6379/0"
    say "Using the Redis on localhost:6379"
  else
    say "No Redis is reachable: starting a private redis-server"
    start_private_redis
    export REDIS_URL="$PRIVATE_REDIS_URL"
  fi
}

# --- PostgreSQL -------------------------------------------------------------------------------
postgres_answers() {
  "$VENV/bin/python" - "$1" <<'PY' 2>/dev/null
import sys, psycopg
psycopg.connect(sys.argv[1], connect_timeout=2).close()
PY
}

# The folder of PostgreSQL's server programs (initdb, pg_ctl, pg_dump), newest version first.
find_pg_bin() {
  local found candidate
  found="$(command -v initdb 2>/dev/null || true)"
  if [ -z "$found" ]; then
    for candidate in /usr/lib/postgresql/*/bin/initdb /opt/homebrew/opt/postgresql@*/bin/initdb \
      /usr/local/opt/postgresql@*/bin/initdb; do
      [ -x "$candidate" ] && found="$candidate"
    done
  fi
  if [ -n "$found" ]; then dirname "$found"; fi
}

check_postgres_server() {
  [ -n "$(find_pg_bin)" ] || need_package postgresql postgresql@17
}

# Start a private, throwaway PostgreSQL cluster (trust auth on 127.0.0.1); its URL goes in
# PRIVATE_POSTGRES_URL. Its folder is outside the clone, which the postgres user may not reach
# (a clone in /root), and is removed when the server stops.
start_private_postgres() {
  local bin port data run=()
  bin="$(find_pg_bin)"
  [ -n "$bin" ] || die "PostgreSQL's initdb was not found: install postgresql and run this again."
  port="$(free_port)"
  data="$(mktemp -d "${TMPDIR:-/tmp}/generator-postgres.XXXXXX")"
  on_cleanup "rm -rf '$data'"
  if [ "$(id -u)" = "0" ]; then
    # PostgreSQL refuses to run as root: run it as the postgres user its package created.
    id postgres >/dev/null 2>&1 ||
      die "PostgreSQL will not run as root, and there is no 'postgres' user to run it as: install Debian's postgresql package, or run this as an ordinary user."
    chown postgres "$data"
    run=(runuser -u postgres --)
  fi
  "${run[@]+"${run[@]}"}" "$bin/initdb" -D "$data" -A trust -U postgres >"$data.log" 2>&1 ||
    die "initdb failed: $(tail -n 2 "$data.log" | tr '\n' ' ')"
  rm -f "$data.log"
  "${run[@]+"${run[@]}"}" "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
    -o "-p $port -k $data -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null ||
    die "the private PostgreSQL did not start: $(tail -n 2 "$data/server.log" | tr '\n' ' ')"
  on_cleanup "${run[*]+${run[*]}} '$bin/pg_ctl' -D '$data' -m fast -w stop"
  export PRIVATE_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
  # The backup tests need pg_dump and pg_restore of this server's version.
  export PATH="$bin:$PATH"
}

# --- Chromium ---------------------------------------------------------------------------------
# The browser tests drive a system Chromium, never one downloaded by Playwright. CHROMIUM_PATH
# names it where it is not /usr/bin/chromium (macOS, custom builds); exported for the tests.
find_chromium() {
  local candidate
  for candidate in /usr/bin/chromium /Applications/Chromium.app/Contents/MacOS/Chromium \
    "$(command -v chromium 2>/dev/null || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then echo "$candidate"; return; fi
  done
}

check_chromium() {
  if [ -n "${CHROMIUM_PATH:-}" ]; then
    [ -x "$CHROMIUM_PATH" ] || die "CHROMIUM_PATH is set but no browser is there: $CHROMIUM_PATH"
  elif [ -z "$(find_chromium)" ]; then
    need_package chromium chromium
  fi
}

ensure_chromium() {
  CHROMIUM_PATH="${CHROMIUM_PATH:-$(find_chromium)}"
  [ -n "$CHROMIUM_PATH" ] || die "Chromium is needed for the browser tests: install it, or set CHROMIUM_PATH to its binary."
  export CHROMIUM_PATH
  say "Using the browser at $CHROMIUM_PATH"
}

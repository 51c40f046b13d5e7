# Shared by scripts/run and scripts/test: find or make what the project needs on this machine.
# Sourced, not run. Everything it starts is stopped by cleanup() on exit or Ctrl-C.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
LOCAL="${GENERATOR_LOCAL_DIR:-$ROOT/.local}"
mkdir -p "$LOCAL"
STARTED_PIDS=()
CLEANUP_COMMANDS=()

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf '\033[31mError: %s\033[0m\n' "$*" >&2; exit 1; }
in_ci() { [ "${CI:-}" = "true" ] || [ "${CI:-}" = "1" ]; }

cleanup() {
  local pid command
  for command in "${CLEANUP_COMMANDS[@]+"${CLEANUP_COMMANDS[@]}"}"; do
    eval "$command" >/dev/null 2>&1 || true
  done
  for pid in "${STARTED_PIDS[@]+"${STARTED_PIDS[@]}"}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED_PIDS[@]+"${STARTED_PIDS[@]}"}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

as_root() {
  if [ "$(id -u)" = "0" ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

# Install a system package with the machine's own package manager, or say how to.
install_package() {
  local debian_name="$1" brew_name="$2"
  if command -v apt-get >/dev/null 2>&1 && as_root true 2>/dev/null; then
    say "Installing $debian_name with apt"
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$debian_name" >/dev/null; then
      as_root apt-get update -q >/dev/null
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$debian_name" >/dev/null
    fi
  elif command -v brew >/dev/null 2>&1; then
    say "Installing $brew_name with Homebrew"
    brew install "$brew_name"
  else
    die "$debian_name is needed: install it (apt install $debian_name, or brew install $brew_name) and run this again."
  fi
}

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
  die "Python 3.12 or newer is needed (Django 6.1). Install it (e.g. 'pyenv install 3.13') and run this again, or set PYTHON=/path/to/python3.13."
}

# A virtual environment with the pinned requirements; reinstalled only when they change.
ensure_venv() {
  if [ ! -x "$VENV/bin/python" ] || ! python_is_recent "$VENV/bin/python"; then
    local python; python="$(find_python)"
    say "Creating a virtual environment with $("$python" --version)"
    rm -rf "$VENV"
    "$python" -m venv "$VENV"
  fi
  local stamp="$VENV/.requirements-stamp" wanted
  wanted="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" | cksum)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    say "Installing the pinned requirements"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements-dev.txt"
    echo "$wanted" > "$stamp"
  fi
  export PATH="$VENV/bin:$PATH"
}

redis_answers() {
  "$VENV/bin/python" - "$1" <<'PY' 2>/dev/null
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1, socket_timeout=2).ping()
PY
}

free_port() {
  "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", int(__import__("sys").argv[1]) if len(__import__("sys").argv) > 1 else 0)); print(s.getsockname()[1])' "$@"
}

# Start a private, throwaway redis-server (no persistence); its URL goes in PRIVATE_REDIS_URL.
# (Not printed: a $(...) subshell would lose the pid that cleanup() must stop.)
start_private_redis() {
  command -v redis-server >/dev/null 2>&1 || install_package redis-server redis
  local port; port="$(free_port)"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$LOCAL" --logfile "$LOCAL/redis-$port.log" >/dev/null &
  STARTED_PIDS+=("$!")
  local url="redis://127.0.0.1:$port/0" _
  for _ in $(seq 50); do redis_answers "$url" && { PRIVATE_REDIS_URL="$url"; return; }; sleep 0.1; done
  die "the private redis-server on port $port did not start (see $LOCAL/redis-$port.log)"
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

postgres_answers() {
  "$VENV/bin/python" - "$1" <<'PY' 2>/dev/null
import sys, psycopg
psycopg.connect(sys.argv[1], connect_timeout=2).close()
PY
}

find_pg_bin() {
  local found
  found="$(command -v initdb 2>/dev/null || true)"
  [ -n "$found" ] || found="$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)"
  [ -n "$found" ] && dirname "$found"
}

# Start a private, throwaway PostgreSQL cluster (trust auth on 127.0.0.1); its URL goes in
# PRIVATE_POSTGRES_URL.
start_private_postgres() {
  local bin; bin="$(find_pg_bin)"
  if [ -z "$bin" ]; then install_package postgresql postgresql@16; bin="$(find_pg_bin)"; fi
  [ -n "$bin" ] || die "PostgreSQL's initdb was not found even after installing it."
  local port data="$LOCAL/postgres" run=()
  port="$(free_port)"
  if [ "$(id -u)" = "0" ]; then
    # PostgreSQL refuses to run as root: run it as the postgres user the package created.
    id postgres >/dev/null 2>&1 || die "running as root, and there is no 'postgres' user to run PostgreSQL as."
    run=(runuser -u postgres --)
  fi
  rm -rf "$data"; mkdir -p "$data"
  [ "$(id -u)" = "0" ] && chown postgres "$data"
  "${run[@]+"${run[@]}"}" "$bin/initdb" -D "$data" -A trust -U postgres >/dev/null
  "${run[@]+"${run[@]}"}" "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
    -o "-p $port -k $data -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
  CLEANUP_COMMANDS+=("${run[*]+${run[*]}} '$bin/pg_ctl' -D '$data' -m fast stop")
  PRIVATE_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
  # The backup tests need pg_dump and pg_restore of this server's version.
  export PATH="$bin:$PATH"
}

# The browser tests drive a system Chromium, never one downloaded by Playwright. CHROMIUM_PATH
# names it where it is not /usr/bin/chromium (macOS, custom builds); exported for the tests.
find_chromium() {
  local candidate
  for candidate in /usr/bin/chromium /Applications/Chromium.app/Contents/MacOS/Chromium \
    "$(command -v chromium 2>/dev/null || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then echo "$candidate"; return; fi
  done
}

ensure_chromium() {
  if [ -n "${CHROMIUM_PATH:-}" ]; then
    [ -x "$CHROMIUM_PATH" ] || die "CHROMIUM_PATH is set but no browser is there: $CHROMIUM_PATH"
  else
    CHROMIUM_PATH="$(find_chromium)"
    if [ -z "$CHROMIUM_PATH" ]; then
      install_package chromium chromium
      CHROMIUM_PATH="$(find_chromium)"
    fi
    [ -n "$CHROMIUM_PATH" ] || die "Chromium is needed for the browser tests: install it, or set CHROMIUM_PATH to its binary."
  fi
  export CHROMIUM_PATH
  say "Using the browser at $CHROMIUM_PATH"
}

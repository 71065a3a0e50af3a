#!/usr/bin/env bash
# The Dockerfile's install steps, checked without a Docker engine: build the wheel, install it
# into a clean virtualenv as an unprivileged user, start `trios3 serve` from it on 0.0.0.0,
# probe /healthz and /readyz as the image's health check would, and stop it with SIGTERM.
# Run as root (CI): it creates the user `trios3check` if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/pip wheel -q --no-deps --wheel-dir "$work/wheels" .
id trios3check >/dev/null 2>&1 || useradd --system --create-home trios3check
chmod 755 "$work"
chmod -R a+rX "$work/wheels"
install -d -o trios3check "$work/venv"
# The system's Python, as in the image (root's pyenv, if any, is not readable by the user).
python=/usr/bin/python3
if ! "$python" -c 'import ensurepip' 2>/dev/null && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
su trios3check -s /bin/bash -c "$python -m venv $work/venv && $work/venv/bin/pip install -q $work/wheels/*.whl"
if ls "$work/venv/lib/"python3*/site-packages | grep -q seaweedfs; then
    echo "container check: the image must not carry the embedded backend" >&2
    exit 1
fi
key=$($work/venv/bin/python -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())')
port=$($work/venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
as_user=(setpriv --reuid=trios3check --regid=trios3check --init-groups --reset-env)
"${as_user[@]}" env TRIOS3_LISTEN="0.0.0.0:$port" TRIOS3_BACKEND=http://127.0.0.1:9 \
    TRIOS3_BACKEND_ACCESS_KEY_ID=k TRIOS3_BACKEND_SECRET_ACCESS_KEY=s \
    TRIOS3_ACCESS_KEY_ID=client TRIOS3_SECRET_ACCESS_KEY=secret TRIOS3_MASTER_KEY="$key" \
    "$work/venv/bin/trios3" serve >"$work/serve.log" 2>&1 &
pid=$!
probe() {
    "$work/venv/bin/python" - "$port" "$1" <<'PY'
import sys, time, urllib.error, urllib.request
port, path = sys.argv[1], sys.argv[2]
for _ in range(100):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            print(r.status, r.read().decode().strip())
            break
    except urllib.error.HTTPError as e:
        print(e.code, e.read().decode().strip())
        break
    except OSError:
        time.sleep(0.1)  # the server is starting
else:
    sys.exit("no answer")
PY
}
health=$(probe /healthz)
ready=$(probe /readyz)
owner=$(ps -o user= -p "$pid" | tr -d ' ')
kill -TERM "$pid"
wait "$pid" && status=0 || status=$?
echo "container check: /healthz -> $health; /readyz (no backend) -> $ready; user $owner; exit $status"
[ "$health" = "200 ok" ] && [[ "$ready" == 503* ]] && [ "$owner" = trios3check ] && [ "$status" = 0 ] || {
    cat "$work/serve.log" >&2
    exit 1
}

#!/usr/bin/env bash
# Benchmark: list N IAM users through nhi-mcp and through AWS Labs' IAM MCP server
# (awslabs-iam-mcp-server), both over stdio with the same MCP Python SDK client, both against
# the same fresh moto server. Checks first that both list the same set of users.
#
#   benches/iam_side_by_side.sh            1000 users, 5 timed rounds
#   USERS=200 ROUNDS=9 benches/iam_side_by_side.sh
#
# Builds nothing: it runs target/release/nhi-mcp (build it with `cargo build --release`), or
# the binary named by $NHI_MCP_BIN. The peers (moto, the AWS Labs server, the Python SDK) come
# from tests/peers/install, under target/peers/. The work is done by
# tests/python/iam_side_by_side.py, which prints two JSON lines: the comparison, then the
# timings (medians of the warm rounds, and each server's first listing apart: nhi-mcp's first
# listing also fills its inventory cache).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
PEERS="$ROOT/target/peers"
USERS="${USERS:-1000}"
ROUNDS="${ROUNDS:-5}"
NHI_MCP_BIN="${NHI_MCP_BIN:-$ROOT/target/release/nhi-mcp}"

# The binary under test first: a missing build is the likeliest failure, and the cheapest to report.
if [[ ! -x "$NHI_MCP_BIN" ]]; then
    echo "iam_side_by_side: no $NHI_MCP_BIN; build it first: cargo build --release" >&2
    exit 1
fi

# Peers (a no-op when the pinned versions are installed). Their summary goes to stderr so that
# stdout holds the results only.
./tests/peers/install >&2

# A moto server of our own, on a free port (retried: a port picked free can be taken before
# moto binds it), stopped by PID when this script exits for any reason. The moto-PID directory
# name is the one tests/run cleans up if this script is killed outright.
MOTO_DIR="$PEERS/moto-$$"
stop_moto() {
    ./tests/peers/moto stop "$MOTO_DIR" || true
    rm -rf "$MOTO_DIR"
}
trap stop_moto EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
for attempt in 1 2 3; do
    if MOTO_URL="$(./tests/peers/moto start "$MOTO_DIR" "$(free_port)")"; then break; fi
    stop_moto
    [[ $attempt -lt 3 ]] || { echo "iam_side_by_side: moto did not start" >&2; exit 1; }
done
echo "moto:        $MOTO_URL (pid $(cat "$MOTO_DIR/pid"))" >&2
echo "nhi-mcp:     $NHI_MCP_BIN" >&2
echo "running:     $USERS users, $ROUNDS rounds (seeding takes a few seconds per 1000 users)" >&2

# Not exec: the EXIT trap has to stop moto afterwards. The JSON lines go to stdout as they are;
# a readable summary of them follows on stderr.
status=0
out="$(NHI_TEST_MOTO_PYTHON="$PEERS/moto/bin/python" "$PEERS/venv/bin/python" tests/python/iam_side_by_side.py \
    --moto "$MOTO_URL" \
    --nhi-mcp "$NHI_MCP_BIN" \
    --awslabs "$PEERS/awslabs/bin/awslabs.iam-mcp-server" \
    --users "$USERS" --path "/sbsbench/" --bench "$ROUNDS")" || status=$?
[[ -z "$out" ]] || printf '%s\n' "$out"
if [[ $status -eq 0 && $ROUNDS -gt 0 ]]; then
    python3 - "$out" >&2 <<'PY'
import json, sys
cmp, bench = (json.loads(line) for line in sys.argv[1].splitlines()[:2])
print(f"same users:  {cmp['same']} ({cmp['nhi_mcp']} through nhi-mcp, {cmp['awslabs']} through awslabs)")
print(f"first call:  nhi-mcp {bench['nhi_mcp_first_ms']:.0f} ms, awslabs {bench['awslabs_first_ms']:.0f} ms")
print(f"warm median: nhi-mcp {bench['nhi_mcp_ms_median']:.1f} ms ({bench['nhi_mcp_calls_per_listing']} calls),"
      f" awslabs {bench['awslabs_ms_median']:.1f} ms (1 call); nhi-mcp/awslabs = {bench['ratio_nhi_over_awslabs']}")
PY
fi
exit "$status"

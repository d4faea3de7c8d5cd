#!/usr/bin/env bash
# The Deadline and Flamenco end-to-end tests, ROUNDS times in a row (default 5), while two busy loops
# hold both cores.  Prints pass/fail per round (with the failed tests) and the total time; the busy
# loops are stopped at the end whatever happens (failure, Ctrl-C, SIGTERM).  Each round's pytest
# output is kept in a directory named at the end.  Exit code: 0 when every round passed, 1 otherwise.
#
#   benchmarks/stress_e2e.sh [ROUNDS] [extra pytest arguments...]
set -u
cd "$(dirname "$0")/.."

rounds=${1:-5}
shift $(( $# > 0 ? 1 : 0 ))
case $rounds in
  ''|*[!0-9]*) echo "ROUNDS must be a whole number, got '$rounds'" >&2; exit 2 ;;
esac
tests=(tests/test_deadline_e2e.py tests/test_e2e_basic.py tests/test_e2e_outage.py tests/test_e2e_control.py
       tests/test_deadline_ops.py)
pytest=.venv/bin/pytest
[ -x "$pytest" ] || { echo "no $pytest: set up the venv first (python3 -m venv .venv && .venv/bin/pip install -e '.[test]')" >&2; exit 2; }
logs=$(mktemp -d "${TMPDIR:-/tmp}/stress-e2e.XXXXXX")

busy=()
run=""
stop_all() {
  local pid
  [ -n "$run" ] && kill "$run" 2>/dev/null
  for pid in "${busy[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${busy[@]}" $run; do wait "$pid" 2>/dev/null; done
  busy=()
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Each loop also ends by itself once this script is gone, even after a SIGKILL.
me=$$
for _ in 1 2; do
  ( while kill -0 "$me" 2>/dev/null; do :; done ) &
  busy+=("$!")
done
echo "busy loops: pids ${busy[*]}; ${rounds} round(s) of: ${tests[*]}"

started=$(date +%s)
failed_rounds=0
for round in $(seq 1 "$rounds"); do
  round_started=$(date +%s)
  log="$logs/round-$round.log"
  # In the background and waited for, so that a signal reaches the traps at once.
  "$pytest" -q -rf -p no:cacheprovider "${tests[@]}" "$@" >"$log" 2>&1 &
  run=$!
  wait "$run"
  code=$?
  run=""
  took=$(( $(date +%s) - round_started ))
  summary=$(tail -n 1 "$log")
  if [ "$code" = 0 ]; then
    echo "round $round: PASS in ${took} s ($summary)"
  else
    failed_rounds=$(( failed_rounds + 1 ))
    echo "round $round: FAIL (pytest exit $code) in ${took} s ($summary)"
    grep -E '^(FAILED|ERROR) ' "$log" | sed 's/^/    /'
  fi
done
total=$(( $(date +%s) - started ))
echo "total: $rounds round(s) in ${total} s, $failed_rounds failed; logs in $logs"
[ "$failed_rounds" = 0 ]

# Sourced by benchmarks/gpu.sh and benchmarks/fused_gpu.sh (not run alone): their shared start.
# Parses the one flag (--cpu-dry-run; -h prints the calling script's header comment), moves to the repository and
# sets REPO, PY and the environment. Sets DRY_RUN (kept when the caller set it first).
DRY_RUN="${DRY_RUN:-0}"
for arg in "$@"; do
  case "$arg" in
    --cpu-dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,/^set /{/^set /d;p}' "$0"; exit 0 ;;
    *) echo "$(basename "$0"): unknown argument $arg (only --cpu-dry-run)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.." || exit 2
REPO="$(pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"  # the GPU machine has torch but not ressenet installed
export PYTHONUNBUFFERED=1

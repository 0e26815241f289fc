#!/usr/bin/env bash
# The project's GPU checks in one call, for a fresh machine with a CUDA GPU and CuPy, and
# a few minutes of it (bench/README.md, "GPU check"). Every log, figure and model lands in
# OUT, a few files in all, written as each phase ends, so that a call stopped at its limit
# still returns what it did.
#
#   bench/gpu_check.sh OUT [PHASE ...]      (default phases: tests bench analyze)
#
# Phases, run in the order given:
#   tests       the whole suite but the slow tests, on $JOBS workers: the gpu tests
#               first, OUT/tests_gpu.xml, then the rest, OUT/tests_rest.xml (JUnit: each
#               test's outcome, skip reason and failure)
#   bench       bench/bench_gpu.py for $VARIANTS, without train.py or the peer:
#               OUT/bench.json
#   peer        bench/bench_gpu.py's PyTorch peer alone ($PEER), eager and --compile
#   trainpy     bench/bench_gpu.py's train.py -g 0 -e 2 alone
#   analyze     analyze.py -g 0 --load models/capsnet_mnist.npz: OUT/analysis.tar.gz
#   profile     bench/profile_gpu.py within $PROFILE_S seconds: train.py -g 0 itself,
#               its steps split into phases, a CUPTI count of launches and syncs, the
#               benchmark's variants over 5 epochs, the peer's real epochs ($PEER:
#               eager, compile, reduce-overhead, max-autotune), nvidia-smi all along,
#               with the new GPU paths on in train.py except those whose gpu tests
#               failed in this call's tests phase, before it (OUT/tests_gpu.xml; all
#               off where that phase left no report; all on without that phase):
#               OUT/profile.json, OUT/profile_report.md (bench/report.py's tables),
#               OUT/profile_console.txt
#   long-start  the used-by training command in the background (train.py -g 0 --save
#               saved_model --reconstruct, with $LONG_ARGS) in $LONG_DIR
#   hold        keeps the machine while that run trains (a call that ends hands the
#               machine back after a short idle time), until $HOLD_S seconds after this
#               script started or the run's end, then packs what it has so far, as
#               long-finish does, without stopping it: call long-finish next, at once
#   long-finish waits for it until $DEADLINE_S seconds after this script started, stops
#               it (SIGTERM: every file it writes is whole), then packs its log, plots and
#               console into OUT/long_result.tar.gz and its best model into 15 MiB parts,
#               OUT/long_model.part_* (cat them, in order, to get the .npz back)
# Phases after long-start share the GPU with it: time nothing there (peer, bench).
#
# Environment:
#   GPU                 the GPU id (0); -1 checks this script on the CPU, with small data
#   CAPSNET_MNIST_DIR   MNIST's four .gz files (else Chainer's cache, filled from mirrors)
#   WHEELS              a folder of wheels that pip installs without an index where
#                       Chainer is missing (e.g. chainer-7.8.1-py3-none-any.whl)
#   VARIANTS            bench_gpu.py --variants (default,chainer-conv)
#   PEER                the peer's torch_capsnet.py, for the peer and profile phases
#   PROFILE_S           (480) the profile phase's deadline, from its start
#   PROFILE_ARGS        more bench/profile_gpu.py flags ('')
#   LONG_DIR            (/tmp/capsnet_long)   LONG_ARGS  more train.py flags ('')
#   DEADLINE_S          (540)                 JOBS       pytest-xdist workers (8)
#   HOLD_S              (570)
#   TESTS               what the tests phase runs (tests)
#   PYTHON              the interpreter (python3)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench/gpu_check.sh OUT [PHASE ...]}
shift
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PHASES=("$@")
[ ${#PHASES[@]} -gt 0 ] || PHASES=(tests bench analyze)
for phase in "${PHASES[@]}"; do
    case $phase in
    tests | bench | peer | trainpy | analyze | profile | long-start | hold | long-finish) ;;
    *) echo "unknown phase $phase: see the top of $0"; exit 2 ;;
    esac
done
GPU=${GPU:-0}
VARIANTS=${VARIANTS:-default,chainer-conv}
LONG_DIR=${LONG_DIR:-/tmp/capsnet_long}
DEADLINE_S=${DEADLINE_S:-540}
HOLD_S=${HOLD_S:-570}
JOBS=${JOBS:-8}
PY=${PYTHON:-python3}
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
DATA=()
[ -n "${CAPSNET_MNIST_DIR:-}" ] && DATA=(--data-dir "$CAPSNET_MNIST_DIR")
SMALL_TEST=() SMALL=()  # the CPU check: a few images, so that every phase ends in minutes
PROFILE_SMALL=()
TESTS_XML=()  # the gpu tests' report, once this call's tests phase has run them
if [ "$GPU" -lt 0 ]; then
    SMALL_TEST=(--n-test 200)
    SMALL=(--n-train 512 "${SMALL_TEST[@]}")
    PROFILE_SMALL=(--train-epochs 2 --host-epochs 2 --device-steps 1 --bench-epochs 2
                   --repeat 1 --peer-epochs 2 --variants default)
fi
START=$SECONDS

log() { echo "== [$((SECONDS - START)) s] $*"; }

log "set-up: $(uname -n), $($PY --version 2>&1)"
if ! $PY -c 'import capsnet_chainer, chainer' 2>/dev/null; then
    [ -n "${WHEELS:-}" ] || { echo "Chainer is missing: pip install chainer==7.8.1, or set WHEELS"; exit 1; }
    $PY -m pip install -q --no-index --no-deps --no-cache-dir "$WHEELS"/*.whl || exit 1
fi
# The versions and the GPU, as the benchmark reports them
PYTHONPATH="bench${PYTHONPATH:+:$PYTHONPATH}" $PY -c \
    "import bench_gpu; print('Machine:', bench_gpu.machine($GPU))" || {
    echo "no CuPy GPU $GPU for $PY (above): install CuPy (README.md, GPU); GPU=-1: CPU check"
    exit 1
}

long_pid() { cat "$LONG_DIR/pid" 2>/dev/null; }

# pack_long: the long run's console, log and plots, and its best model in 15 MiB parts
pack_long() {
    tail -n 5 "$LONG_DIR/console.txt"
    tar -czf "$OUT/long_result.tar.gz" -C "$LONG_DIR" console.txt \
        $(cd "$LONG_DIR" && ls result/log result/*.png 2>/dev/null)
    if [ -f "$LONG_DIR/saved_model" ]; then
        sha256sum "$LONG_DIR/saved_model"
        split -b 15M "$LONG_DIR/saved_model" "$OUT/long_model.part_"
    fi
}

# run_tests NAME MARKERS: the tests that MARKERS select, on $JOBS workers: OUT/NAME.xml
run_tests() {
    local xdist=()
    $PY -c 'import xdist' 2>/dev/null && xdist=(-n "$JOBS")
    rm -f "$OUT/$1.xml"  # an earlier call's report is not this one's
    $PY -m pytest -m "$2" -q -rfEs -p no:cacheprovider "${xdist[@]}" \
        --junitxml="$OUT/$1.xml" ${TESTS:-tests}
    echo "pytest -m '$2' exit status $?"
}

for phase in "${PHASES[@]}"; do
    log "phase $phase"
    case $phase in
    tests)
        # The gpu tests first, in a report of their own: the rest of the suite takes
        # minutes, and a call stopped at its limit still returns that report
        # The profile reads their report only where they ran here, on a GPU
        if [ "$GPU" -ge 0 ]; then
            run_tests tests_gpu gpu
            TESTS_XML=(--tests-xml "$OUT/tests_gpu.xml")
        fi
        run_tests tests_rest "not slow and not gpu"
        ;;
    bench)
        $PY bench/bench_gpu.py -g "$GPU" "${DATA[@]}" "${SMALL[@]}" --variants "$VARIANTS" \
            --repeat 3 --no-train-py --json "$OUT/bench.json"
        ;;
    peer)
        $PY bench/bench_gpu.py -g "$GPU" --variants '' --no-train-py --peer "${PEER:?set PEER}"
        ;;
    trainpy)
        $PY bench/bench_gpu.py -g "$GPU" "${DATA[@]}" "${SMALL[@]}" --variants ''
        ;;
    profile)
        # shellcheck disable=SC2086
        $PY bench/profile_gpu.py -g "$GPU" "${DATA[@]}" "${SMALL[@]}" "${PROFILE_SMALL[@]}" \
            ${PEER:+--peer "$PEER"} --deadline-s "${PROFILE_S:-480}" \
            "${TESTS_XML[@]}" \
            --json "$OUT/profile.json" ${PROFILE_ARGS:-} 2>&1 | tee "$OUT/profile_console.txt"
        $PY bench/report.py "$OUT/profile.json" >"$OUT/profile_report.md" &&
            cat "$OUT/profile_report.md"
        ;;
    analyze)
        work=$(mktemp -d)
        $PY analyze.py -g "$GPU" --load models/capsnet_mnist.npz "${DATA[@]}" \
            "${SMALL_TEST[@]}" -o "$work/analysis" && \
            tar -czf "$OUT/analysis.tar.gz" -C "$work" analysis
        ;;
    long-start)
        if [ -n "$(long_pid)" ] && kill -0 "$(long_pid)" 2>/dev/null; then
            echo "a long run is already going (pid $(long_pid))"
            continue
        fi
        mkdir -p "$LONG_DIR"
        # A session of its own: the run goes on if this call returns first.
        # shellcheck disable=SC2086
        setsid $PY train.py -g "$GPU" --save "$LONG_DIR/saved_model" --reconstruct \
            -o "$LONG_DIR/result" "${DATA[@]}" "${SMALL[@]}" ${LONG_ARGS:-} \
            >"$LONG_DIR/console.txt" 2>&1 </dev/null &
        echo $! >"$LONG_DIR/pid"
        echo "started pid $(long_pid): $LONG_DIR/console.txt"
        ;;
    long-finish)
        pid=$(long_pid)
        [ -n "$pid" ] || { echo "no long run in $LONG_DIR"; continue; }
        while kill -0 "$pid" 2>/dev/null && [ $((SECONDS - START)) -lt "$DEADLINE_S" ]; do
            sleep 10
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "stopping the long run at the deadline (${DEADLINE_S} s)"
            kill -TERM "$pid"
            while kill -0 "$pid" 2>/dev/null; do sleep 1; done
        fi
        pack_long
        ;;
    hold)
        pid=$(long_pid)
        [ -n "$pid" ] || { echo "no long run in $LONG_DIR"; continue; }
        while kill -0 "$pid" 2>/dev/null && [ $((SECONDS - START)) -lt "$HOLD_S" ]; do
            sleep 5
        done
        log "the long run so far (still going: call long-finish now)"
        pack_long
        ;;
    esac
done
log "done; in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"

#!/usr/bin/env bash
# Drive an mfask study from a shell loop, with a stand-in instrument.
#
# Each round asks the study for parameter settings (a CSV), lets the
# "instrument" (examples/instrument.py; replace it with your own program or
# a job submission) measure them, and tells the readings back. Every command
# commits to the study file before it returns, so the loop can be stopped or
# killed at any point and simply started again: it continues from the file.
#
# Run:  bash examples/instrument_loop.sh [work-directory]
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
study="$work/oscillator.mfask"
echo "study: $study"

if [ ! -f "$study" ]; then
    cat > "$work/spec.toml" <<'SPEC'
seed = 1
fidelities = ["low", "high"]

[parameters]
a = {low = 0.5, high = 2.0}
k = {low = 0.1, high = 1.5}

[flow]
hidden_features = 20
num_transforms = 2
SPEC
    mfask init "$study" --spec "$work/spec.toml"
fi

# measure: ask N tickets at a fidelity, run the instrument, tell the results
measure() {
    local fidelity=$1 n=$2
    # tickets an interrupted earlier run left pending are measured first
    # (same ticket, same seed); their CSV has the columns the instrument needs
    mfask status "$study" --pending --format csv > "$work/tickets.csv"
    if [ "$(wc -l < "$work/tickets.csv")" -le 1 ]; then
        mfask ask "$study" -f "$fidelity" -n "$n" -o "$work/tickets.csv" > /dev/null
    else
        echo "measuring $(($(wc -l < "$work/tickets.csv") - 1)) pending ticket(s) first"
    fi
    python "$here/instrument.py" "$work/tickets.csv" "$work/results.csv"
    mfask tell "$study" "$work/results.csv"
}

for round in 1 2 3; do
    echo "== low-fidelity round $round"
    measure low 100
done
for round in 1 2; do
    echo "== high-fidelity round $round"
    measure high 20
done

# train; exit code 4 means "not enough data yet", 6 "another process trains"
set +e
mfask fit "$study" --wait 600
code=$?
set -e
case $code in
    0) ;;
    4) echo "not enough successful measurements to train yet"; exit 0 ;;
    6) echo "another process is training; try again later"; exit 0 ;;
    *) echo "mfask fit failed with exit code $code" >&2; exit "$code" ;;
esac

# posterior samples at an observed reading, and everything as CSV
mfask sample "$study" -n 1000 --x 0.02,-0.35,0.25 -o "$work/samples.csv"
python - "$work/samples.csv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
for name in rows[0]:
    values = [float(r[name]) for r in rows]
    print(f"posterior {name}: mean {statistics.mean(values):.3f}, sd {statistics.stdev(values):.3f}")
PY
mfask export "$study" -o "$work/all.csv"
mfask status "$study"

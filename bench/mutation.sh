#!/usr/bin/env bash
# Mutation testing of the numeric core: mutmut changes net.py, simclr/optimizers.py,
# simclr/evaluate.py and simclr/augment_batched.py one small edit at a time and runs the fast unit
# tests that reach the edited function; a mutant the tests still pass ("survived") is either a
# missing test or an edit that cannot change behaviour. Not in CI: about 6 minutes on two cores (BENCHMARKS.md).
#   pip install mutmut && bash bench/mutation.sh
# Prints the tally and every survivor; `cd <the printed folder> && mutmut show NAME` shows a diff.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/simclr-mutation.XXXX)
git -C "$root" archive HEAD | tar -x -C "$work"  # the committed code, as the printed commit
cd "$work"
others=$(ls *.py simclr/*.py | grep -vxE 'net.py|simclr/optimizers.py|simclr/evaluate.py|simclr/augment_batched.py' | sed 's/.*/"&"/' | paste -sd,)
cat >> pyproject.toml <<TOML

[tool.mutmut]
source_paths = ["net.py", "simclr/optimizers.py", "simclr/evaluate.py", "simclr/augment_batched.py"]
also_copy = [$others]
# one process: under pyproject.toml's pytest-xdist workers mutmut sees no test reach any mutant
pytest_add_cli_args = ["-n", "0"]
pytest_add_cli_args_test_selection = [
    "tests/test_net.py", "tests/test_optimizers.py", "tests/test_evaluate.py",
    "tests/test_augment_batched.py", "tests/test_loss.py", "tests/test_checkpoints.py",
]
TOML
echo "mutating a copy in $work at commit $(git -C "$root" rev-parse --short HEAD)"
# One compile thread: a mutant that turns torch.compile on then compiles in its own process, where
# a forked pool of compile workers would hang without using the CPU time the timeout counts.
OMP_NUM_THREADS=1 TORCHINDUCTOR_COMPILE_THREADS=1 mutmut run --max-children 2 > run.log 2>&1 || { tail -30 run.log; exit 1; }
mutmut results --all true > results.txt
echo "mutants: $(grep -c ': ' results.txt)"
cut -d: -f2 results.txt | sort | uniq -c
echo "survivors:"
grep -E ': (survived|no tests)' results.txt || true

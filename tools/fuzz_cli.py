"""A seeded fuzzing campaign of the moepim command line; prints the counts per verdict.

    python tools/fuzz_cli.py [--configs 400] [--layer-configs 150] [--traces 300] [--args 300] [--seed 0] [--show 20]

Cases and verdicts are those of ``tests/fuzzing.py`` (the same harness the hypothesis suite
``tests/test_fuzz_cli.py`` runs at a few dozen examples): every command runs in-process in a
fresh folder holding the user's own files; a refused config is also given to ``run``. Verdicts:
clean, traceback (exit 3, another code, a traceback or several lines), unclear (one line that
names neither file nor key), silently_wrong (exit 0 on an invalid input, or a converted trace
moepim then rejects), lost (a user's file changed), left_output, hang.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fuzzing import (  # noqa: E402
    args_case,
    config_case,
    config_run_case,
    describe,
    layer_config_case,
    run_case,
    summarize,
    trace_case,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", type=int, default=400)
    ap.add_argument("--layer-configs", type=int, default=150)
    ap.add_argument("--traces", type=int, default=300)
    ap.add_argument("--args", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=20, help="non-clean cases to print")
    ap.add_argument("--json", type=Path, help="write every non-clean case here")
    opts = ap.parse_args()
    rng = random.Random(opts.seed)
    results, t0 = [], time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n = 0
        for kind, count, make in (("configs", opts.configs, config_case),
                                  ("layer configs", opts.layer_configs, layer_config_case),
                                  ("traces", opts.traces, trace_case),
                                  ("args", opts.args, args_case)):
            for _ in range(count):
                case = make(random.Random(rng.randrange(1 << 32)))
                r = run_case(case, root / f"c{n}")
                n += 1
                results.append(r)
                if kind.endswith("configs") and r.code == 2:
                    results.append(run_case(config_run_case(case), root / f"c{n}"))
                    n += 1
            print(f"{kind}: {summarize(results)} ({time.monotonic() - t0:.0f} s)",
                  file=sys.stderr)
    counts = summarize(results)
    print(json.dumps(counts))
    bad = [r for r in results if r.verdict != "clean"]
    for r in bad[:opts.show]:
        print(describe(r))
    if opts.json:
        opts.json.write_text("\n".join(describe(r) for r in bad) + "\n")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())

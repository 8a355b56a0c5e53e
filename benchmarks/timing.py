"""Wall-clock helper shared by the benchmark scripts."""

import time


def best_of(fn, repeats: int) -> float:
  """Best wall time in seconds of `repeats` calls of `fn` (which must block until done)."""
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best

"""Package layering: sampling (and the sample CLI) runs without importing the training package."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sampling_does_not_import_training():
  code = (
    "import pkgutil, sys, holocine_jax.sample, holocine_jax.sampling as s\n"
    "for m in pkgutil.iter_modules(s.__path__): __import__(f'holocine_jax.sampling.{m.name}')\n"
    "print(sorted(m for m in sys.modules if m.startswith('holocine_jax.training')))"
  )
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "[]", f"sampling imports training modules: {out.stdout}"

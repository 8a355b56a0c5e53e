"""Deviceless planning of jobs on TPU slices: programs (what to compile), memory (compile and
read per-chip bytes), search (mesh choice and the plan); `holocine_jax.plan` is the CLI."""

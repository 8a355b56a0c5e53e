"""The planner compiles real jobs for deviceless TPU slices and reports per-chip memory."""

import dataclasses
import json

import jax
import pytest

from holocine_jax import config_file, plan
from holocine_jax.planning import memory, programs, search
from holocine_jax.weights import formats

SMALL_SCENE = ["--frames", "17", "--height", "64", "--width", "64", "--shots", "2"]
TINY = ["--config", "configs/tiny.py:block=128", *SMALL_SCENE]  # TPU kernel: 128k blocks
A14B_2_LAYERS = [
  "--frames",
  "5",
  "--height",
  "240",
  "--width",
  "416",
  "--set",
  "model.num_layers=2",
]


def _json(capsys, argv):
  result = plan.main([*argv, "--json"])
  return result, json.loads(capsys.readouterr().out)


def test_tiny_sample_table(capsys):
  result = plan.main(
    [*TINY, "--job", "sample", "--topology", "v5p-8", "--shots", "2", "--batch", "4"]
  )
  out = capsys.readouterr().out
  assert result.compiled and result.fits
  assert result.mesh == dict(data=1, fsdp=4, context=1, tensor=1)  # 4 scenes: one per chip
  assert "fits: peak" in out and "data=1 fsdp=4 context=1 tensor=1" in out
  assert "8 rows x 80 tokens" in out  # 4 scenes, CFG: 8 rows of 4 latent frames of 4x4 tokens


def test_tiny_sample_at_guidance_one_has_one_row_per_scene(capsys):
  argv = [*TINY, "--job", "sample", "--topology", "v5p-8", "--shots", "2", "--batch", "4"]
  argv += ["--set", "sampler.guidance_high=1", "--set", "sampler.guidance_low=1"]
  result, out = _json(capsys, argv)
  assert out["compiled"] and out["fits"] and out["rows"] == 4  # no negative rows
  assert out["guidance"] == dict(high=1.0, low=1.0)
  assert "4 rows x 80 tokens" in plan.table(result) and "no negative pass" in plan.table(result)


def test_tiny_sparse_train_json(capsys):
  argv = ["--config", "configs/tiny.py:attention=sparse,block=128", *SMALL_SCENE, "--job", "train"]
  argv += ["--topology", "v5p-8", "--shots", "3"]
  result, out = _json(capsys, argv)
  assert out["compiled"] and out["fits"] and out["topology"] == "v5p-8"
  assert (
    out["mesh"]["data"] * out["mesh"]["fsdp"] * out["mesh"]["context"] * out["mesh"]["tensor"] == 4
  )
  assert out["hbm_bytes"] == int(95.74 * 2**30) and out["num_layers"] == 2
  m = out["per_device_bytes"]
  assert set(m) == {"arguments", "outputs", "temporaries", "aliased", "resident", "peak"}
  assert m["resident"] == 0  # training holds nothing outside its step
  assert m["peak"] == m["arguments"] + m["outputs"] + m["temporaries"] - m["aliased"] > 0
  assert m["aliased"] > 0  # the train state is donated
  assert out["compile_s"] > 0 and out["fraction"] == pytest.approx(
    m["peak"] / out["hbm_bytes"], 1e-3
  )
  assert out["shot_bound_frames"] == 5  # tiny's fixed data.max_shot_frames
  assert out["kv_blocks_visited"] > 0 and out["kv_blocks_dense"] > 0
  assert out["rows"] == 8  # the config's global batch
  assert out["lora"] is None


@pytest.mark.parametrize("job", ["sample", "train"])
def test_a14b_two_layers(capsys, job):
  config = "configs/holocine_a14b.py:attention=sparse,batch=4"
  result, out = _json(
    capsys,
    ["--config", config, "--job", job, "--topology", "v5p-8", "--shots", "2", *A14B_2_LAYERS],
  )
  assert out["compiled"] and out["fits"] and out["num_layers"] == 2
  assert out["tokens"] == 2 * 15 * 26  # 2 latent frames of 30x52 latents in 2x2 patches
  assert out["rows"] == (2 if job == "sample" else 4)  # CFG over one scene / the global batch
  # One scene of two 1-frame shots, padded to 13 shots: the summary tail dominates at this size.
  assert out["shot_bound_frames"] == 2 and out["kv_blocks_visited"] > 0  # capped at the clip


@pytest.fixture(scope="module")
def a14b_two_layer_trains():
  """JSON plans of the A14B train step at 2 layers on v5p-8 (fsdp 4): full, LoRA, QLoRA int8."""
  argv = ["--job", "train", "--topology", "v5p-8", "--shots", "2", *A14B_2_LAYERS]
  argv += ["--set", "mesh.fsdp=4", "--json"]
  config = "configs/holocine_a14b.py:attention=sparse,batch=4"
  out = {}
  for name, arg in [("full", ""), ("lora", ",lora=64"), ("qlora", ",lora=64,lora_base=int8")]:
    out[name] = plan.main(["--config", config + arg, *argv]).to_json()
  return out


@pytest.mark.slow  # three A14B train-step compiles
def test_a14b_lora_train_holds_adapters_only(a14b_two_layer_trains):
  full, lora, qlora = (a14b_two_layer_trains[k] for k in ("full", "lora", "qlora"))
  assert all(p["compiled"] and p["fits"] and p["num_layers"] == 2 for p in (full, lora, qlora))
  assert full["lora"] is None
  assert lora["lora"] == dict(rank=64, base="bf16") and qlora["lora"] == dict(rank=64, base="int8")
  m = {k: p["per_device_bytes"] for k, p in a14b_two_layer_trains.items()}
  # Full: fp32 params + AdamW moments, 12 bytes a param; LoRA: a 2-byte base + small adapters.
  assert m["lora"]["arguments"] < m["full"]["arguments"] / 4
  assert m["qlora"]["arguments"] < m["lora"]["arguments"]  # int8 block kernels
  assert m["lora"]["peak"] < m["full"]["peak"]
  # Donated: the whole train state in full, only the adapters' (never the frozen base) in LoRA.
  assert 0 < m["lora"]["aliased"] < m["full"]["aliased"] / 10


def test_too_small_slice_does_not_fit(capsys):
  # An FFN of 2^27 features: 2 layers x 2 x 32 x 2^27 fp32 weights = 64 GiB on one 16 GB chip.
  argv = [*TINY, "--job", "sample", "--topology", "v5e-1", "--shots", "2"]
  argv += ["--set", "model.ffn_dim=134217728"]
  result, out = _json(capsys, argv)
  assert not out["fits"] and not out["compiled"]
  assert out["per_device_bytes"]["peak"] > out["hbm_bytes"]
  assert "RESOURCE_EXHAUSTED" in out["error"]


def test_unknown_topology_is_one_clear_error():
  with pytest.raises(SystemExit, match="unknown TPU topology 'v9-8'"):
    plan.main([*TINY, "--job", "sample", "--topology", "v9-8"])


def test_mesh_that_does_not_divide_is_one_clear_error():
  with pytest.raises(SystemExit, match="v5p-8 has 4 chips: mesh .* does not divide 4"):
    plan.main([*TINY, "--job", "sample", "--topology", "v5p-8", "--set", "mesh.fsdp=3"])


def test_out_of_memory_messages_parse():
  early = (
    "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
    "temporaries (4.30T) exceeds available HBM (95.74G)."
  )
  m = memory.parse_out_of_memory(early, arguments=2**30)
  assert m.temporaries == int(4.30 * 2**40) and m.peak == m.temporaries + 2**30
  report = (
    "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm. "
    "Used 40.48G of 31.25G hbm. Exceeded hbm capacity by 9.23G.\n\nTotal hbm usage >= 41.48G:\n"
    "    reserved        530.00M \n    program          38.52G \n    arguments         1.44G \n\n"
    "Output size 1.44G; shares 1.44G with arguments.\n\nProgram hbm requirement 38.52G:\n"
    "    HLO temp         38.40G (100.0% utilization)\n"
  )
  m = memory.parse_out_of_memory(report, arguments=0)
  assert m.peak == int(40.48 * 2**30) and m.arguments == int(1.44 * 2**30)
  assert m.temporaries == int(38.40 * 2**30) and m.aliased == m.outputs == int(1.44 * 2**30)


def test_mesh_candidates_follow_the_job_shapes():
  config = config_file.load("configs/holocine_a14b.py")
  sample = search.candidates(config, programs.Request("sample"), 4)  # one scene: no batch split
  assert [(m["context"], m["tensor"]) for m in sample] == [(4, 1), (2, 2), (1, 4)]
  assert all(m["data"] == m["fsdp"] == 1 for m in sample)
  minute = search.candidates(config, programs.Request("sample", frames=961, shots=13), 16)
  assert not minute  # 16 chips: 40 heads and one scene leave no split
  train = search.candidates(config, programs.Request("train", batch=16), 32)
  assert train[0] == dict(data=1, fsdp=16, context=2, tensor=1)
  assert all(
    16 % (m["data"] * m["fsdp"]) == 0 and 40 % (m["context"] * m["tensor"]) == 0 for m in train
  )


def _tiny_encoders():
  """tiny.py with a small VAE and umT5 (it names neither: the real ones would compile slowly)."""
  config = config_file.load("configs/tiny.py")
  config.vae = dict(
    base_dim=8,
    z_dim=4,
    dim_mult=(1, 2, 2, 2),
    num_res_blocks=1,
    latents_mean=(0.0,) * 4,
    latents_std=(1.0,) * 4,
  )
  config.text_encoder = dict(vocab_size=128, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2)
  return config


def _fake_plan(largest: int):
  """search.plan without compiling: a batch fits up to `largest`, one GiB per row."""

  def fake(config, request, topology_name, *, mesh, fit, log):
    del config, log
    return search.Plan(
      request.job,
      topology_name,
      chips=4,
      hbm_bytes=64 * 2**30,
      fit_limit=fit,
      mesh=mesh,
      compiled=True,
      fits=request.batch <= largest,
      per_device_bytes=memory.Memory(peak=request.batch * 2**30),
      facts=dict(rows=request.batch),
    )

  return fake


def test_batch_search_doubles_then_bisects(monkeypatch, capsys):
  monkeypatch.setattr(search, "plan", _fake_plan(largest=21))
  argv = [*TINY, "--job", "vae", "--for", "preprocess", "--topology", "v5p-8"]
  result = plan.main(argv)  # 4 chips on data: batches of 4, 8, 16, 32, then 24, 20
  assert [p["batch"] for p in result.probes] == [4, 8, 16, 20, 24, 32]
  assert result.fits and result.facts["rows"] == 20
  assert result.facts["next_batch"] == 24 and result.facts["next_peak"] == 24 * 2**30
  out = capsys.readouterr().out
  assert "24: peak 24.00 GiB, does not fit" in out and "batch 20: peak 20.00 GiB, fits" in out
  assert "preprocess ... --batch_size 20 --height 64 --width 64" in out


def test_batch_search_reports_a_misfit_at_one_row_per_shard(monkeypatch):
  monkeypatch.setattr(search, "plan", _fake_plan(largest=3))
  result = search.largest_batch(
    config_file.load("configs/tiny.py"),
    programs.Request("text", purpose="preprocess"),
    "v5p-8",
    mesh=dict(fsdp=2, data=-1),
  )
  assert not result.fits and result.facts["rows"] == 4 and "next_batch" not in result.facts
  assert [p["batch"] for p in result.probes] == [4]


def test_preprocess_plans_only_encoders_on_data_and_fsdp():
  with pytest.raises(SystemExit, match="purpose 'preprocess' plans .* not job 'train'"):
    plan.main([*TINY, "--job", "train", "--for", "preprocess", "--topology", "v5p-8"])
  with pytest.raises(SystemExit, match="the encoders split only data and fsdp"):
    argv = ["--set", "mesh.fsdp=2", "--set", "mesh.tensor=2"]
    plan.main([*TINY, *argv, "--job", "text", "--for", "preprocess", "--topology", "v5p-8"])


def test_tiny_text_batch_search_compiles():
  """The umT5 of preprocessing, compiled: with the limit at the peak of one row per shard, the
  batch found fits and one more row per shard does not (peaks grow in steps of padded tiles)."""
  config = _tiny_encoders()
  request = programs.Request("text", batch=4, purpose="preprocess")
  one = search.plan(config, request, "v5p-8", mesh=dict(data=-1))
  assert one.facts["rows"] == 4 and one.facts["tokens"] == config.data.text_len  # no negative
  fit = one.per_device_bytes.peak / one.hbm_bytes
  result = search.largest_batch(config, dataclasses.replace(request, batch=0), "v5p-8", fit=fit)
  rows, limit = result.facts["rows"], fit * result.hbm_bytes
  assert result.fits and result.mesh["data"] == 4 and rows % 4 == 0
  assert result.per_device_bytes.peak <= limit < result.facts["next_peak"]
  assert result.facts["next_batch"] == rows + 4


def test_tiny_vae_encode_compiles():
  """Preprocessing's VAE call (data/encoders.video_encoder) on uint8 clips, one per chip, beside
  the umT5 params that preprocessing keeps loaded."""
  config = _tiny_encoders()
  request = programs.Request("vae", 5, 32, 32, shots=1, batch=4, purpose="preprocess")
  result = search.plan(config, request, "v5p-8", mesh=search.encoder_mesh("v5p-8"))
  assert result.compiled and result.fits and result.facts == dict(rows=4, frames=5)
  m = result.per_device_bytes
  shapes, _ = formats.abstract("umt5", formats.model_config("umt5", config))
  assert m.resident == sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))  # replicated
  assert m.peak == m.arguments + m.outputs + m.temporaries - m.aliased + m.resident

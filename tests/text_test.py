"""Tokenizer, Wan cleaning, HoloCine text windows and the prompt encoder API.

References: a sentencepiece unigram model trained here (T5 layout: pad 0, eos 1, unk 2; the
HoloCine markers are NOT user-defined symbols, as in the real umT5 vocabulary, which splits
"[shot cut]" into ordinary pieces), transformers' tokenizers built from it, and HoloCine's
`WanPrompter.encode_prompt` window loop re-typed over transformers' offsets.
"""

import html
import types
import unicodedata

import jax
import numpy as np
import pytest
import sentencepiece as spm
from transformers import PreTrainedTokenizerFast, T5Tokenizer
from transformers.convert_slow_tokenizer import T5Converter

from holocine_jax import sharding, text
from holocine_jax.layout import TextWindows
from holocine_jax.model import umt5
from holocine_jax.scene import Scene

_VOCAB_TEXT = (
  "a man woman child dog cat walks runs sits stands looks at the camera slowly quickly in on "
  "under over bright dark warm cold light shadow room street city night day rain snow forest "
  "close-up wide shot medium tracking pan tilt zoom red blue green golden old young smiling "
  "crying talking window door table chair car train sky sea mountain river bridge neon sign"
)
_WORDS = _VOCAB_TEXT.split()
_EXTRA = [
  "Der Hund läuft über die Straße, während es regnet.",
  "猫が窓の外を見ている。雨の夜、ネオンが光る。",
  "一个女人在雨中行走，镜头缓慢推进。",
  "Le café est chaud; élégant, naïve façade — déjà vu.",
  "Эмоциональная сцена: мужчина смотрит в окно.",
  "She said “hello” and 'goodbye' (twice) – 42 times, 3.5 seconds!",
]
PROMPTS = [
  "A man walks into a dimly lit bar.",
  "[global caption] A rainy night in the city. This scene contains 2 shots. [per shot caption] "
  "Wide shot of the street. [shot cut] Close-up of a woman smiling.",
  "  leading and trailing spaces   and\ttabs\nnewlines  ",
  "Der Hund läuft über die Straße.",
  "猫が窓の外を見ている。",
  "一个女人在雨中行走",
  "Le café est chaud; élégant — déjà vu.",
  "Эмоциональная сцена.",
  "She said “hello” and 'goodbye' – 42 times!",
  "Unknown glyphs: ☃☃ ✈ 🙂 and ǅ ligature ﬁ ＦＵＬＬ width.",
  "[shot cut][shot cut] [per shot caption][global caption]",
  "tom &amp; jerry &amp;amp; friends &lt;b&gt;",
  "Mojibake: doesnâ€™t matter.",
  "a",
  "",
  "red blue green golden " * 20,
  "The camera pans over a mountain river at dawn, golden light on the water.",
  "[global caption] x This scene contains 1 shots. [per shot caption] y",
  "numbers 1234567890 and symbols #$%^*_+=~`|<>",
  "mixed 中文 English русский 日本語 text",
]


def _corpus(n=600, seed=0):
  rng = np.random.default_rng(seed)
  lines = []
  for i in range(n):
    words = rng.choice(_WORDS, size=rng.integers(4, 14))
    lines.append(" ".join(words).capitalize() + ".")
    if i % 5 == 0:
      lines.append(
        "[global caption] " + lines[-1] + " This scene contains 3 shots. [per shot caption] "
        "Wide shot. [shot cut] Close-up. [shot cut] Medium shot."
      )
  return lines + _EXTRA * 20


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("spm")
  (d / "corpus.txt").write_text("\n".join(_corpus()), encoding="utf-8")
  spm.SentencePieceTrainer.train(
    input=str(d / "corpus.txt"),
    model_prefix=str(d / "spiece"),
    vocab_size=400,
    model_type="unigram",
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    character_coverage=1.0,
    hard_vocab_limit=False,
    minloglevel=2,
  )
  return d


@pytest.fixture(scope="module")
def tok(spm_dir):
  return text.Tokenizer.from_path(spm_dir / "spiece.model")


@pytest.fixture(scope="module")
def hf_fast(spm_dir, tmp_path_factory):
  """transformers' T5Converter pipeline (how Wan's tokenizer.json was made) as a fast tokenizer."""
  orig = types.SimpleNamespace(
    vocab_file=str(spm_dir / "spiece.model"), _extra_ids=0, legacy=True, add_prefix_space=True
  )
  orig.convert_tokens_to_ids = lambda t: 1
  path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
  T5Converter(orig).converted().save(str(path))
  return PreTrainedTokenizerFast(
    tokenizer_file=str(path), eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
  )


def _hf_encode(hf, prompt, text_len):
  """HoloCine's HuggingfaceTokenizer call on the Wan-cleaned prompt."""
  enc = hf(
    [text.clean_prompt(prompt)],
    padding="max_length",
    truncation=True,
    max_length=text_len,
    add_special_tokens=True,
    return_offsets_mapping=True,
  )
  return enc["input_ids"][0], enc["attention_mask"][0], [tuple(o) for o in enc["offset_mapping"][0]]


def _holocine_positions(cleaned, offsets):
  """HoloCine's `encode_prompt` span -> token-range loop, re-typed over python lists."""
  spans = []
  g, s = cleaned.find("[global caption]"), cleaned.find("[per shot caption]")
  cuts = []
  pos = cleaned.find("[shot cut]")
  while pos >= 0:
    cuts.append((pos, pos + len("[shot cut]")))
    pos = cleaned.find("[shot cut]", pos + 1)
  if g >= 0:
    spans.append((-1, g, s if s >= 0 else len(cleaned)))
  if s >= 0:
    start, shot_id = s, 0
    for _, end in cuts:
      spans.append((shot_id, start, end))
      start, shot_id = end, shot_id + 1
    if start < len(cleaned):
      spans.append((shot_id, start, len(cleaned)))
  ids = [-2] * len(offsets)
  for i, (a, b) in enumerate(offsets):
    if a == b:
      continue
    for sid, s0, s1 in spans:
      if not (b <= s0 or a >= s1):
        ids[i] = sid
        break
  ids = np.asarray(ids)
  glob = np.flatnonzero(ids == -1)
  shots = [np.flatnonzero(ids == i) for i in range(ids.max() + 1)]
  return (
    (int(glob.min()), int(glob.max()) + 1),
    [(int(t.min()), int(t.max()) + 1) for t in shots if len(t)],
  )


def _scene(shots, global_caption="A rainy night in a neon city, cinematic.", frames=81):
  return Scene.create(global_caption, shots, frames)


SCENES = [
  _scene(["Wide shot of the street.", "Close-up of a woman smiling.", "The car drives away."]),
  _scene(["A single long take over the river."]),
  _scene([f"Shot {i}: the dog runs under the bridge." for i in range(5)], frames=121),
  _scene(["猫が窓の外を見ている。", "Der Hund läuft über die Straße.", "tom &amp; jerry “hi”"]),
]


def test_clean_prompt_matches_wan():
  assert text.clean_prompt("  a&amp;amp;b \n\t c  ") == "a&b c"
  assert text.clean_prompt("doesnâ€™t") == "doesn't"
  assert text.clean_prompt("x\u3000\u00a0y") == "x y"
  assert text.clean_prompt(html.escape("<b>")) == "<b>"


def test_ids_match_transformers_and_sentencepiece(spm_dir, tok, hf_fast):
  sp = spm.SentencePieceProcessor(model_file=str(spm_dir / "spiece.model"))
  hf_slow_path = T5Tokenizer.from_pretrained(str(spm_dir), extra_ids=0)
  for prompt in PROMPTS:
    enc = tok.encode(prompt, 128)
    cleaned = text.clean_prompt(prompt)
    ids = enc.ids[: enc.length].tolist()
    assert ids == hf_slow_path(cleaned)["input_ids"], prompt
    assert ids == sp.encode(cleaned) + [1], prompt
    hf_ids, hf_mask, hf_offsets = _hf_encode(hf_fast, prompt, 128)
    assert enc.ids.tolist() == hf_ids, prompt
    assert enc.mask.astype(int).tolist() == hf_mask, prompt
    assert [tuple(o) for o in enc.offsets.tolist()] == hf_offsets, prompt


def test_offsets_map_back_to_characters(tok):
  pieces = tok.backend
  checked = 0
  for prompt in PROMPTS:
    enc = tok.encode(prompt, 128)
    for i in range(enc.length - 1):  # the last real token is EOS with offset (0, 0)
      a, b = enc.offsets[i]
      piece = pieces.id_to_token(int(enc.ids[i]))
      got = enc.text[a:b]
      if piece == "<unk>":
        assert got.strip(), (prompt, i)
        continue
      if piece == "\u2581":  # a lone "▁": the space before, or the one prepended at position 0
        assert got == " " or a == 0, (prompt, i, got)
        continue
      if unicodedata.normalize("NFKC", got) != got:
        continue  # normalised characters (ﬁ, ＦＵＬＬ, ǅ) map back to their originals
      # a leading "▁" stands for the preceding space (or for the one prepended at position 0)
      assert got.replace(" ", "\u2581").lstrip("\u2581") == piece.lstrip("\u2581"), (got, piece)
      checked += 1
    assert enc.offsets[enc.length - 1].tolist() == [0, 0]
    assert not enc.offsets[enc.length :].any()
    assert (enc.ids[enc.length :] == tok.pad_id).all()
  assert checked > 300


def test_tokenizer_json_path_equals_model_path(spm_dir, tok, tmp_path):
  tok.backend.save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "spiece.model").write_bytes(b"not a model")  # never read: the json wins
  from_dir = text.Tokenizer.from_path(tmp_path)
  from_json = text.Tokenizer.from_path(tmp_path / "tokenizer.json")
  for prompt in PROMPTS:
    a, b, c = (t.encode(prompt, 64) for t in (tok, from_dir, from_json))
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.offsets, c.offsets)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="neither"):
    text.Tokenizer.from_path(tmp_path / "empty")
  model_dir = tmp_path / "model_only"
  model_dir.mkdir()
  (model_dir / "spiece.model").write_bytes((spm_dir / "spiece.model").read_bytes())
  np.testing.assert_array_equal(
    text.Tokenizer.from_path(model_dir).encode(PROMPTS[1]).ids, tok.encode(PROMPTS[1]).ids
  )


def test_windows_match_holocine(tok, hf_fast):
  compared = 0
  for scene in SCENES:
    for text_len in (512, 100, 72):
      _, _, offsets = _hf_encode(hf_fast, scene.prompt(), text_len)
      g, shots = _holocine_positions(text.clean_prompt(scene.prompt()), offsets)
      try:
        enc, win = text.tokenize_scene(tok, scene, text_len, truncate=True)
      except text.TextError as e:
        # HoloCine silently returns fewer shot ranges here (and falls back to full attention)
        assert "no tokens left" in str(e) and len(shots) < scene.num_shots
        continue
      assert win == TextWindows(g, tuple(shots)), (scene.shot_captions, text_len)
      compared += 1 + enc.truncated
  assert compared >= len(SCENES) + 3  # every scene untruncated, some truncated


def test_three_shot_windows_cover_their_spans(tok):
  scene = SCENES[0]
  enc, win = text.tokenize_scene(tok, scene)
  glob, shot_spans = text.char_spans(enc.text)
  spans = [glob, *shot_spans]
  assert enc.text[shot_spans[0][0] : shot_spans[0][1]].endswith("[shot cut]")
  assert enc.text[shot_spans[2][0] :].strip() == "The car drives away."
  ranges = [win.global_range, *win.shot_ranges]
  owner = text.assign_tokens(enc.offsets, spans)
  for j, ((s, e), (c0, c1)) in enumerate(zip(ranges, spans, strict=True)):
    # every token inside the window overlaps its span and belongs to it (first overlap) ...
    assert (owner[s:e] == j).all(), j
    for a, b in enc.offsets[s:e]:
      assert a < c1 and b > c0
    # ... and the window's text holds its span's text; extra characters only come from a token
    # straddling the span end (its offset starts at the space a "▁" piece stands for)
    a, b = enc.offsets[s][0], enc.offsets[e - 1][1]
    start = max(c0, enc.offsets[s - 1][1]) if j else c0  # a straddling token went to span j-1
    assert a >= c0 - 1 and enc.text[start:c1].strip() in enc.text[a:b]
    if b > c1:
      assert enc.text[enc.offsets[e - 1][0]] == " " and enc.offsets[e - 1][0] < c1
    assert owner[e] != j  # the token after the range belongs elsewhere (or is EOS)
  # HoloCine's quirk, kept: "▁[" of "[per shot caption]" starts at the space before it, inside
  # the global span, so it closes the global window and shot 0 starts at "per".
  g1 = win.global_range[1]
  assert enc.text[slice(*enc.offsets[g1 - 1])] == " [" and enc.offsets[g1 - 1][1] == glob[1] + 1
  # windows are contiguous and ordered: global, shot 0, shot 1, shot 2, then EOS
  ends = [r[1] for r in ranges]
  assert [r[0] for r in ranges[1:]] == ends[:-1] and ends[-1] == enc.length - 1
  # the allow table adds HoloCine's inclusive end token and everything after the last window
  allow = win.allow_table(512)
  pos = np.arange(512)
  (g0, g1) = win.global_range
  for i, (s, e) in enumerate(win.shot_ranges):
    want = ((pos >= g0) & (pos <= g1)) | ((pos >= s) & (pos <= e)) | (pos > max(ends))
    np.testing.assert_array_equal(allow[i], want)
    assert allow[i, e] and (i == 2 or not allow[i, e + 1] or e + 1 > max(ends))


def test_shot_count_mismatch_is_an_error(tok):
  # HTML-escaped marker inside a caption passes Scene validation but becomes a cut after Wan's
  # cleaning: 4 shot windows for a 3-shot scene.
  scene = _scene(["Wide shot.", "Close-up &#91;shot cut&#93; of a cat.", "Medium shot."])
  with pytest.raises(text.TextError, match=r"4 shot captions .* scene has 3 shots"):
    text.tokenize_scene(tok, scene)
  enc = tok.encode(SCENES[0].prompt())
  with pytest.raises(text.TextError, match=r"3 shot captions .* scene has 2 shots"):
    text.prompt_windows(enc, num_shots=2)


def test_too_long_prompt_names_count_and_cut_shots(tok):
  scene = _scene(["Wide shot.", "Close-up of a woman.", "red blue green golden " * 30])
  full, full_win = text.tokenize_scene(tok, scene, 4096)
  n, s2 = full.length, full_win.shot_ranges[2][0]
  text_len = s2 + 6  # keeps 5 tokens of shot 2, then EOS
  msg = rf"prompt has {n} tokens .* takes {text_len}; .*would cut shot 2 \(partly\)\. .*truncate="
  with pytest.raises(text.TextError, match=msg):
    text.tokenize_scene(tok, scene, text_len)
  enc, win = text.tokenize_scene(tok, scene, text_len, truncate=True)
  assert enc.length == text_len and enc.ids[text_len - 1] == 1  # EOS kept, as HF truncation
  assert win.shot_ranges == (*full_win.shot_ranges[:2], (s2, text_len - 1))
  # shots that lose every token: named as cut entirely, and an error even when truncating
  scene = _scene(["red blue green golden " * 30, "Close-up.", "Wide shot."])
  _, full_win = text.tokenize_scene(tok, scene, 4096)
  text_len = full_win.shot_ranges[0][0] + 4
  msg = r"shot 0 \(partly\), shot 1 \(entirely\), shot 2 \(entirely\)"
  with pytest.raises(text.TextError, match=msg):
    text.tokenize_scene(tok, scene, text_len)
  with pytest.raises(text.TextError, match="no tokens left for shot 1, shot 2"):
    text.tokenize_scene(tok, scene, text_len, truncate=True)
  with pytest.raises(text.TextError, match=r"prompt has \d+ tokens .* takes 8; .*at the end"):
    text.tokenize_prompts(tok, ["a plain negative prompt that is far too long"], 8)


def test_prompt_encoder_api(tok):
  vocab = -(-tok.vocab_size // 8) * 8
  config = umt5.UMT5Config(
    vocab_size=vocab, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
    param_dtype="float32", dtype="float32",
  )  # fmt: skip
  mesh = sharding.make_mesh({"data": -1})
  rules = sharding.DEFAULT_LOGICAL_RULES
  params, _ = sharding.init_sharded(umt5.init_fn(config), mesh, rules, jax.random.key(1))
  enc = text.PromptEncoder(tok, config, params, mesh, rules, text_len=128)
  pos, neg = enc.encode_for_cfg(SCENES[:2], "blurry, low quality, static")
  assert pos.context_BxTxD.shape == (2, 128, 32) and neg.context_BxTxD.shape == (2, 128, 32)
  assert neg.windows == [None, None]
  for scene, win in zip(SCENES[:2], pos.windows, strict=True):
    assert win == text.tokenize_scene(tok, scene, 128)[1]
  ids, mask, _ = text.tokenize_prompts(tok, [*SCENES[:2], "blurry, low quality, static"], 128)
  want = np.asarray(umt5.encode(params, ids, mask, config=config))
  np.testing.assert_allclose(np.asarray(pos.context_BxTxD), want[:2], atol=1e-6)
  np.testing.assert_allclose(np.asarray(neg.context_BxTxD), want[[2, 2]], atol=1e-6)
  lengths = mask.sum(-1)
  for b in range(2):
    assert not np.asarray(pos.context_BxTxD[b, lengths[b] :]).any()
    assert np.abs(np.asarray(pos.context_BxTxD[b, : lengths[b]])).min() > 0
  with pytest.raises(TypeError, match="Scene or str"):
    enc.encode([42])

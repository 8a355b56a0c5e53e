"""Prompt text -> umT5 token ids, character offsets, HoloCine's text windows and embeddings.

HoloCine tokenizes the WHOLE prompt once (Wan's cleaning, 512 tokens, EOS appended, padded) and
maps character spans to token ranges through the tokenizer's offsets:
  global  = from "[global caption]" to the start of "[per shot caption]",
  shot 0  = from "[per shot caption]" to the END of the first "[shot cut]",
  shot i  = from the end of the previous "[shot cut]" to the end of the next one,
  last    = from the end of the last "[shot cut]" to the end of the string.
Every token with a non-empty offset belongs to the FIRST span it overlaps; a range is [min, max+1)
of its tokens. Spans are taken on the cleaned string the offsets index into (HoloCine takes them
on the uncleaned prompt, which differs only when cleaning changes characters).

Unlike HoloCine, a prompt longer than the text length is an error naming its token count and the
shots that would be cut (`truncate=True` allows it), and a shot count that differs from the
Scene's is an error. `PromptEncoder` runs the jitted, sharded umT5 encoder on top.

Legend: B batch, T text tokens, D model dim, N tokens before padding.
"""

from __future__ import annotations

import dataclasses
import html
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
from tokenizers import decoders, normalizers, pre_tokenizers, processors

from holocine_jax import sharding
from holocine_jax.layout import TextWindows
from holocine_jax.model import umt5
from holocine_jax.scene import CUT_MARKER, GLOBAL_MARKER, SHOTS_MARKER, Scene
from holocine_jax.weights import store

try:  # Wan cleans with the `regex` package; its \s matches Unicode White_Space.
  import regex as _re
except ImportError:  # pragma: no cover
  import re as _re

TEXT_LEN = 512  # Wan's text length: umT5 output truncated at the true length, zero-padded to 512
_SPACE = _re.compile(r"\s+")
_METASPACE = "\u2581"


class TextError(ValueError):
  """A prompt that does not tokenize into the windows its Scene needs (too long, shot mismatch)."""


def clean_prompt(text: str) -> str:
  """Wan's `whitespace_clean(basic_clean(text))`: ftfy, double HTML unescape, collapse spaces."""
  try:
    import ftfy
  except ImportError as e:  # pragma: no cover
    raise ImportError(
      "prompt cleaning needs `ftfy` (pip install 'ftfy>=6.1'), as Wan's does"
    ) from e
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return _SPACE.sub(" ", text).strip()


@dataclasses.dataclass(frozen=True)
class Encoding:
  """One tokenized prompt at a fixed text length (truncated if needed, then padded)."""

  text: str  # the cleaned string all offsets index into
  ids: np.ndarray  # [T] int32
  mask: np.ndarray  # [T] bool, True for real tokens (EOS included)
  offsets: np.ndarray  # [T, 2] int32 character offsets; (0, 0) for EOS and padding
  num_tokens: int  # tokens (with specials) before truncation
  content_offsets: np.ndarray  # [N, 2] offsets of ALL content tokens, before truncation

  @property
  def length(self) -> int:
    return int(self.mask.sum())

  @property
  def truncated(self) -> bool:
    return self.num_tokens > len(self.ids)


class Tokenizer:
  """umT5 tokenizer on the `tokenizers` library: ids and character offsets as HF's fast one.

  Takes over `backend`: its own truncation and padding are switched off (`encode` does both).
  """

  def __init__(self, backend: tokenizers.Tokenizer, pad_id: int | None = None):
    backend.no_truncation()
    backend.no_padding()
    self.backend = backend
    pad = backend.token_to_id("<pad>")
    self.pad_id = pad_id if pad_id is not None else (0 if pad is None else pad)
    self.num_special = backend.num_special_tokens_to_add(False)

  @classmethod
  def from_path(cls, path: str | os.PathLike) -> Tokenizer:
    """From a `tokenizer.json`, a sentencepiece `.model`, or a folder holding either (the json
    wins, as in Wan's `google/umt5-xxl` folder)."""
    path = os.fspath(path)
    if os.path.isdir(path):
      names = sorted(os.listdir(path))
      if "tokenizer.json" in names:
        return cls(tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json")))
      models = [n for n in names if n.endswith(".model")]
      if not models:
        raise FileNotFoundError(f"{path} has neither tokenizer.json nor a sentencepiece .model")
      path = os.path.join(path, "spiece.model" if "spiece.model" in models else models[0])
    if not os.path.isfile(path):
      raise FileNotFoundError(f"tokenizer file {path} does not exist")
    if path.endswith(".json"):
      return cls(tokenizers.Tokenizer.from_file(path))
    return cls(from_sentencepiece(path))

  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str, text_len: int = TEXT_LEN, *, clean: bool = True) -> Encoding:
    """Cleans (as Wan) and tokenizes `text` into exactly `text_len` ids; never raises on length:
    like HF `truncation=True`, content is cut to fit with the EOS kept."""
    if clean:
      text = clean_prompt(text)
    keep = text_len - self.num_special
    if keep < 1:
      raise ValueError(f"text_len {text_len} leaves no room beside {self.num_special} specials")
    enc = self.backend.encode(text, add_special_tokens=False)
    content = np.asarray(enc.offsets, np.int32).reshape(-1, 2)
    num_tokens = len(enc.ids) + self.num_special
    if len(enc.ids) > keep:
      enc.truncate(keep)
    enc = self.backend.post_process(enc, add_special_tokens=True)
    n = len(enc.ids)
    ids = np.full((text_len,), self.pad_id, np.int32)
    ids[:n] = enc.ids
    offsets = np.zeros((text_len, 2), np.int32)
    offsets[:n] = np.asarray(enc.offsets, np.int32).reshape(-1, 2)
    return Encoding(text, ids, np.arange(text_len) < n, offsets, num_tokens, content)


def from_sentencepiece(path: str | os.PathLike) -> tokenizers.Tokenizer:
  """A `tokenizers` pipeline from a sentencepiece unigram `.model`, built as transformers'
  T5Converter builds `tokenizer.json` (so ids and offsets match HF's fast T5 tokenizer)."""
  from sentencepiece import sentencepiece_model_pb2

  proto = sentencepiece_model_pb2.ModelProto()
  with open(path, "rb") as f:
    proto.ParseFromString(f.read())
  spec = proto.trainer_spec
  if spec.model_type != 1:
    raise ValueError(f"{path}: only unigram sentencepiece models are supported (umT5 is unigram)")
  vocab = [(p.piece, p.score) for p in proto.pieces]
  tok = tokenizers.Tokenizer(
    tokenizers.models.Unigram(vocab, unk_id=spec.unk_id, byte_fallback=False)
  )
  tok.add_tokens(
    [
      tokenizers.AddedToken(p.piece, normalized=False, special=p.type == 3)
      for p in proto.pieces
      if p.type in (3, 4)  # CONTROL, USER_DEFINED
    ]
  )
  norms = [
    normalizers.Strip(left=False, right=True),
    normalizers.Replace(tokenizers.Regex(" {2,}"), _METASPACE),
  ]
  if proto.normalizer_spec.precompiled_charsmap:
    norms.insert(0, normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
  tok.normalizer = normalizers.Sequence(norms)
  tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_METASPACE, prepend_scheme="always")
  tok.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme="always")
  eos = spec.eos_piece or "</s>"
  tok.post_processor = processors.TemplateProcessing(
    single=["$A", eos], pair=["$A", eos, "$B", eos], special_tokens=[(eos, spec.eos_id)]
  )
  return tok


def char_spans(text: str) -> tuple[tuple[int, int] | None, list[tuple[int, int]]]:
  """HoloCine's character spans: (global span or None, [shot spans]) of a prompt string."""
  g, s = text.find(GLOBAL_MARKER), text.find(SHOTS_MARKER)
  global_span = (g, s if s >= 0 else len(text)) if g >= 0 else None
  shots = []
  if s >= 0:
    start = s
    pos = text.find(CUT_MARKER)
    while pos >= 0:
      end = pos + len(CUT_MARKER)
      shots.append((start, end))
      start = end
      pos = text.find(CUT_MARKER, end)
    if start < len(text):
      shots.append((start, len(text)))
  return global_span, shots


def assign_tokens(offsets_Nx2: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
  """[N] index of the FIRST span each token overlaps; -1 for none or an empty offset."""
  out = np.full((len(offsets_Nx2),), -1, np.int32)
  for i, (a, b) in enumerate(np.asarray(offsets_Nx2).tolist()):
    if a == b:
      continue
    for j, (s0, s1) in enumerate(spans):
      if not (b <= s0 or a >= s1):
        out[i] = j
        break
  return out


def _ranges(owner: np.ndarray, count: int) -> list[tuple[int, int] | None]:
  """[min, max+1) token range of every span index in [0, count), None where it has no tokens."""
  out = []
  for j in range(count):
    idx = np.flatnonzero(owner == j)
    out.append((int(idx.min()), int(idx.max()) + 1) if len(idx) else None)
  return out


def prompt_windows(encoding: Encoding, num_shots: int | None = None) -> TextWindows:
  """HoloCine's text windows of an encoded prompt; checks the shot count against `num_shots`."""
  global_span, shot_spans = char_spans(encoding.text)
  if global_span is None or not shot_spans:
    raise TextError(
      f"a windowed prompt needs {GLOBAL_MARKER!r} and {SHOTS_MARKER!r}: {encoding.text[:80]!r}"
    )
  if num_shots is not None and len(shot_spans) != num_shots:
    raise TextError(
      f"the cleaned prompt has {len(shot_spans)} shot captions (split at {CUT_MARKER!r}) but the "
      f"scene has {num_shots} shots; did cleaning (ftfy / HTML unescape) create or remove a "
      f"marker? prompt: {encoding.text[:120]!r}"
    )
  spans = [global_span, *shot_spans]
  ranges = _ranges(assign_tokens(encoding.offsets, spans), len(spans))
  empty = [("global caption" if j == 0 else f"shot {j - 1}") for j, r in enumerate(ranges) if not r]
  if empty:
    raise TextError(
      f"no tokens left for {', '.join(empty)} in the {len(encoding.ids)}-token encoding "
      f"(prompt has {encoding.num_tokens} tokens); shorten the captions"
    )
  return TextWindows(ranges[0], tuple(ranges[1:]))


def _check_length(encoding: Encoding, truncate: bool) -> None:
  """Raises naming the token count and the cut shots when the prompt does not fit."""
  if not encoding.truncated or truncate:
    return
  text_len = len(encoding.ids)
  global_span, shot_spans = char_spans(encoding.text)
  spans = ([global_span] if global_span else []) + shot_spans
  owner = assign_tokens(encoding.content_offsets, spans)
  keep = int(encoding.mask.sum()) - (encoding.num_tokens - len(encoding.content_offsets))
  first = 1 if global_span else 0
  cut = sorted({int(j) - first for j in owner[keep:] if j >= first})
  kept = {int(j) - first for j in owner[:keep] if j >= first}
  if cut:
    where = ", ".join(f"shot {i} ({'partly' if i in kept else 'entirely'})" for i in cut)
  elif spans:
    where = "the global caption"
  else:
    where = f"{encoding.num_tokens - text_len} tokens at the end"
  raise TextError(
    f"prompt has {encoding.num_tokens} tokens but the text encoder takes {text_len}; truncation "
    f"would cut {where}. Shorten the captions or pass truncate=True. Prompt: "
    f"{encoding.text[:80]!r}..."
  )


def tokenize_scene(
  tokenizer: Tokenizer, scene: Scene, text_len: int = TEXT_LEN, *, truncate: bool = False
) -> tuple[Encoding, TextWindows]:
  """A Scene's prompt -> (encoding, its text windows), with HoloCine's window semantics."""
  encoding = tokenizer.encode(scene.prompt(), text_len)
  _check_length(encoding, truncate)
  return encoding, prompt_windows(encoding, scene.num_shots)


def tokenize_prompts(
  tokenizer: Tokenizer,
  prompts: Sequence[Scene | str],
  text_len: int = TEXT_LEN,
  *,
  truncate: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[TextWindows | None]]:
  """(ids [B, T], mask [B, T], windows): a Scene gets windows, a plain string (negative) None."""
  ids, mask, windows = [], [], []
  for p in prompts:
    if isinstance(p, Scene):
      enc, win = tokenize_scene(tokenizer, p, text_len, truncate=truncate)
    elif isinstance(p, str):
      enc, win = tokenizer.encode(p, text_len), None
      _check_length(enc, truncate)
    else:
      raise TypeError(f"prompts must be Scene or str, got {type(p).__name__}")
    ids.append(enc.ids)
    mask.append(enc.mask)
    windows.append(win)
  return np.stack(ids), np.stack(mask), windows


@dataclasses.dataclass(frozen=True)
class EncodedText:
  """Context embeddings [B, T, D] (zero beyond each true length) and per-row text windows."""

  context_BxTxD: jax.Array
  windows: list[TextWindows | None]


class PromptEncoder:
  """Tokenizes Scenes / strings and runs the jitted umT5 encoder sharded on a mesh.

  This is what the sampler and trainer call: `encode` for any list of prompts, `encode_for_cfg`
  for a batch of scenes plus one negative prompt (one encoder call for both).
  """

  def __init__(
    self,
    tokenizer: Tokenizer,
    config: umt5.UMT5Config,
    params,
    mesh: jax.sharding.Mesh,
    rules,
    *,
    text_len: int = TEXT_LEN,
  ):
    """`params` are placed on `mesh` (e.g. by `store.load` or `sharding.init_sharded`): the
    encoder is jitted for their shardings."""
    if tokenizer.vocab_size > config.vocab_size:
      raise ValueError(
        f"tokenizer has {tokenizer.vocab_size} ids but the encoder embeds {config.vocab_size}"
      )
    self.tokenizer, self.config, self.params = tokenizer, config, params
    self.text_len = text_len
    shardings = jax.tree.map(lambda x: x.sharding, params)
    self._encode = umt5.make_encode_fn(config, mesh, rules, shardings)
    self._batch_multiple = sharding.batch_shards(mesh, rules)

  @classmethod
  def from_checkpoint(
    cls, checkpoint: str, tokenizer: str, mesh, rules, *, text_len: int = TEXT_LEN
  ) -> PromptEncoder:
    """The umT5 `text_encoder` of a converted folder, restored onto `mesh`, with the tokenizer
    at the path `tokenizer` (see `Tokenizer.from_path`)."""
    _, config = store.component_config(checkpoint, "text_encoder")
    params = store.load(checkpoint, "text_encoder", mesh, rules)
    return cls(Tokenizer.from_path(tokenizer), config, params, mesh, rules, text_len=text_len)

  def encode(self, prompts: Sequence[Scene | str], *, truncate: bool = False) -> EncodedText:
    """[B, T, D] context + windows (None for plain strings), B = len(prompts)."""
    ids_BxT, mask_BxT, windows = tokenize_prompts(
      self.tokenizer, prompts, self.text_len, truncate=truncate
    )
    b = len(prompts)
    pad = -b % self._batch_multiple  # whole rows of padding (length 0 -> zero output)
    if pad:
      ids_BxT = np.concatenate([ids_BxT, np.full((pad, self.text_len), self.tokenizer.pad_id)])
      mask_BxT = np.concatenate([mask_BxT, np.zeros((pad, self.text_len), bool)])
    context = self._encode(self.params, ids_BxT.astype(np.int32), mask_BxT)
    return EncodedText(context[:b] if pad else context, windows)

  def encode_for_cfg(
    self, scenes: Sequence[Scene], negative_prompt: str, *, truncate: bool = False
  ) -> tuple[EncodedText, EncodedText]:
    """(positive, negative): scenes with windows; the negative (no windows) repeated B times."""
    out = self.encode([*scenes, negative_prompt], truncate=truncate)
    b = len(scenes)
    neg_BxTxD = jnp.broadcast_to(out.context_BxTxD[b:], (b, *out.context_BxTxD.shape[1:]))
    return EncodedText(out.context_BxTxD[:b], out.windows[:b]), EncodedText(neg_BxTxD, [None] * b)

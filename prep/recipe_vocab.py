"""The tokenizer a prep command uses under ``--recipe`` (`common.recipes`).

``seed``: the ``--tokenizer`` given (Qwen2's by default). ``modern``: the run's cut vocabulary, the folder
``vocab`` beside OUT. The pretraining prep (``prep wiki|text``) cuts it the first time: it tokenizes its
corpus with Qwen2 into a scratch folder beside OUT, keeps the recipe's number of ids counted on the train
split (`prep.vocab_build`), and then tokenizes for real with the cut vocabulary. Every later prep of the
same run (``prep sft|pref`` with an OUT in the same folder) finds that folder and reuses it, so all the
run's token folders share one tokenizer.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from common.errors import UserError
from common.outputs import read_json
from common.recipes import VOCAB_FOLDER, check, vocab_size
from prep.tokenizer import CUT_VOCAB_FILE, DEFAULT_TOKENIZER, is_cut_vocab_folder


class RecipeVocabError(UserError):
    """A prep recipe that cannot be followed (a --tokenizer beside --recipe modern, no vocabulary cut yet)."""


def recipe_vocab_folder(out: str | Path) -> Path:
    """Where the run's cut vocabulary lives: ``vocab`` beside the token folder OUT (absolute, so every token
    folder and checkpoint made from it names the same folder wherever it is run from)."""
    return Path(out).absolute().parent / VOCAB_FOLDER


def recipe_tokenizer(recipe: str, tokenizer: str, out: str | Path, size: int | None = None,
                     cut_from: Callable[[Path], object] | None = None) -> str:
    """The tokenizer spec for a prep command writing `out` under `recipe`.

    `cut_from(folder)` tokenizes the command's corpus with Qwen2 into `folder`: given by the pretraining
    preps, which cut the vocabulary when the run has none yet; `size` overrides the recipe's id count.
    """
    want = vocab_size(check(recipe))
    if want is None:
        return tokenizer
    if tokenizer != DEFAULT_TOKENIZER:
        raise RecipeVocabError(f"--recipe {recipe} tokenizes with the run's cut vocabulary "
                               f"({recipe_vocab_folder(out)}); leave out --tokenizer {tokenizer}")
    folder = recipe_vocab_folder(out)
    if size is not None and cut_from is None:
        raise RecipeVocabError("--vocab-size is for the prep that cuts the vocabulary (prep wiki|text)")
    if is_cut_vocab_folder(str(folder)):
        made = read_json(folder / CUT_VOCAB_FILE).get("size")
        if size is not None and made != size:
            raise RecipeVocabError(f"{folder}: the run's vocabulary has {made:,} ids, not --vocab-size {size:,}; "
                                   "remove that folder (and the token folders made with it) to cut another")
        return str(folder)
    if cut_from is None:
        raise RecipeVocabError(f"{folder}: no cut vocabulary ({CUT_VOCAB_FILE}) yet; the pretraining prep makes it: "
                               f"run `prep wiki|text --recipe {recipe} --out {folder.parent}/...` first")
    cut_vocabulary(folder, size or want, cut_from)
    return str(folder)


def cut_vocabulary(folder: Path, size: int, cut_from: Callable[[Path], object]) -> None:
    """Tokenize with Qwen2 into a scratch folder beside `folder`, cut `size` ids from its train split."""
    from prep.vocab_build import build_vocab, folder_summary

    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{folder.name}.counting-", dir=folder.parent) as scratch:
        tokens = Path(scratch) / "qwen2"
        cut_from(tokens)
        record = build_vocab([tokens], folder, size)
    print("\n".join(folder_summary(record)))
    print(f"cut the vocabulary to {size:,} ids: {folder} (every later --recipe modern prep beside it reuses it)")

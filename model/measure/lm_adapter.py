"""lm-evaluation-harness's view of our checkpoints: the ``zh-mini-llm`` model type.

It imports lm-eval at the top, so only `model.measure.harness` imports it, and only once lm-eval is there.

Why an adapter over our own model rather than lm-eval's ``hf`` model over an on-the-fly export:
it works for every checkpoint (the ``bytes`` tokenizer of the tests has no Hugging Face form, so its
export has no tokenizer), needs no temporary copy of an 800 MB model, computes the 151,680-wide
output layer only where a continuation is scored (one position per multiple-choice answer, and one
forward pass for a question's four answers), generates with our KV-cache `Engine`, and renders chat
prompts with the very code SFT trained on (`prep.chat_template`). Fidelity to the ``hf`` path comes
from `TemplateLM`, the base class lm-eval's ``hf`` model uses: the same context / continuation
split, empty-context prefix token, left truncation and rolling windows; what is left to us is the
forward pass (`model.scoring`, tested against a direct computation and against the export).

Chat prompts. lm-eval passes prompts as strings: `apply_chat_template` renders ChatML pieces
(`prep.chat_template.chat_pieces`) with the special tokens written out, and from then on
`tok_encode` reads ``<|im_start|>`` / ``<|im_end|>`` / ``<|endoftext|>`` in text back as their ids,
as a Hugging Face tokenizer does. Without a chat template, special strings in task text stay text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from rich.console import Console

from common.progress import bar
from model.generate import TextStream
from model.io import is_chat
from model.loader import load_for_generation
from model.sampling import SamplingParams
from model.scoring import GPTBackend, Row, score_rows
from prep.chat_template import CHATML_TEMPLATE, chat_pieces

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's own default for generate_until


@register_model("zh-mini-llm")
class ZhMiniLM(TemplateLM):
    """``lm_eval.simple_evaluate(model="zh-mini-llm", model_args="ckpt=runs/sft")`` once this module is imported."""

    def __init__(self, ckpt: str = "runs/sft", device: str | None = "auto", dtype: str = "auto",
                 batch_size: int | str | None = 16, console: Console | None = None, **_ignored) -> None:
        super().__init__()
        loaded = load_for_generation(ckpt, device or "auto", dtype)
        self.loaded, self.tok, self.engine = loaded, loaded.tokenizer, loaded.engine
        self.scorer = GPTBackend(loaded.model, loaded.engine.autocast)
        self.batch_size = int(batch_size) if str(batch_size or "").isdigit() else 16  # "auto" is not supported
        self.console = console or Console(stderr=True)
        self.ckpt = str(ckpt)
        self._special_text = False  # set by apply_chat_template
        self.cut_requests = 0  # requests longer than the context, cut from the left
        self._special_ids = dict(self.tok.special_tokens)  # "<|im_start|>" -> id
        self._special_split = re.compile("(" + "|".join(map(re.escape, self._special_ids)) + ")")

    # --- what TemplateLM needs -------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tok.eot_id  # documents follow <|endoftext|> in training, so it starts an empty context

    @property
    def max_length(self) -> int:
        return self.loaded.model.config.block_size

    @property
    def device(self):
        return self.engine.device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        ids = self._encode_chat_text(string) if self._special_text else self.tok.encode(string)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, ids) -> str:
        return self.tok.decode(ids)

    def _encode_chat_text(self, text: str) -> list[int]:
        parts = self._special_split.split(text)  # odd indices are the special strings
        encoded = iter(self.tok.encode_batch(parts[0::2]))
        ids: list[int] = []
        for k, part in enumerate(parts):
            ids += [self._special_ids[part]] if k % 2 else next(encoded)
        return ids

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """Each request is ``((context, continuation), context ids, continuation ids)``."""
        T = self.max_length
        rows: list[Row | None] = []
        for _, context_enc, continuation_enc in requests:
            if len(continuation_enc) > T:
                raise ValueError(f"a continuation of {len(continuation_enc)} tokens exceeds the context of {T}")
            whole = (context_enc + continuation_enc)[-(T + 1):]  # as lm-eval's hf model: cut from the left
            self.cut_requests += len(context_enc) + len(continuation_enc) > T + 1
            rows.append(Row(tuple(whole), len(continuation_enc)) if continuation_enc else None)
        scores = self._score([r for r in rows if r is not None], "loglikelihood", disable_tqdm)
        out = [next(scores) if r is not None else (0.0, True) for r in rows]
        for (pair, _, _), result in zip(requests, out, strict=True):
            self.cache_hook.add_partial("loglikelihood", pair, result)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts in disjoint windows of the context, as lm-eval's hf model does."""
        rows, owners = [], []
        for k, (string,) in enumerate(req.args for req in requests):
            windows = lm_utils.get_rolling_token_windows(token_list=self.tok_encode(string),
                                                         prefix_token=self.prefix_token_id,
                                                         max_seq_len=self.max_length, context_len=1)
            for context, predicted in map(lm_utils.make_disjoint_window, windows):
                rows.append(Row(tuple(context + predicted), len(predicted)))
                owners.append(k)
        totals = [0.0] * len(requests)
        for k, (lp, _) in zip(owners, self._score(rows, "loglikelihood_rolling", disable_tqdm), strict=True):
            totals[k] += lp
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def _score(self, rows: list[Row], what: str, disable: bool) -> Iterator[tuple[float, bool]]:
        with self._progress(what, len(rows), disable) as advance:
            return iter(score_rows(self.scorer, rows, self.batch_size, advance))

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, if a task asks) generation with our KV cache, cut at the first stop string."""
        out = []
        with self._progress("generate_until", len(requests), disable_tqdm) as advance:
            for req in requests:
                context, gen_kwargs = req.args
                prompt = self.tok_encode(context) or [self.tok.eot_id]
                self.cut_requests += len(prompt) > self.max_length  # the engine keeps the last block
                text = self._generate(prompt, dict(gen_kwargs or {}))
                self.cache_hook.add_partial("generate_until", req.args, text)
                out.append(text)
                advance(1)
        return out

    def _generate(self, prompt: list[int], kw: dict) -> str:
        until = kw.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        sample = bool(kw.get("do_sample")) and float(kw.get("temperature", 1.0)) > 0
        params = SamplingParams(max_new_tokens=int(kw.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)),
                                temperature=float(kw.get("temperature", 1.0)) if sample else 0.0,
                                top_k=int(kw.get("top_k") or 0), top_p=float(kw.get("top_p") or 1.0),
                                seed=int(kw.get("seed", 1234)))
        stream, text = TextStream(self.tok), ""
        for step in self.engine.stream(prompt, params):
            if step[0] is None:
                break
            text += stream.push(step[0])
            cut = min((i for i in (text.find(s) for s in until if s) if i >= 0), default=-1)
            if cut >= 0:
                return text[:cut]
        text += stream.flush()
        cut = min((i for i in (text.find(s) for s in until if s) if i >= 0), default=-1)
        return text[:cut] if cut >= 0 else text

    # --- chat ------------------------------------------------------------------------------------
    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """ChatML as SFT trained on it. Without a generation prompt the last (assistant) message is
        left open, to be continued, as lm-eval's hf model does with ``continue_final_message``."""
        self._special_text = True
        messages = list(chat_history)
        prefix = ""
        if not add_generation_prompt and messages and messages[-1]["role"] == "assistant":
            prefix = messages.pop()["content"]
            add_generation_prompt = True
        pieces, _ = chat_pieces(messages, self.tok, add_generation_prompt=add_generation_prompt)
        names = {i: text for text, i in self._special_ids.items()}
        return "".join(p.text if p.text is not None else names[p.special_id] for p in pieces) + prefix

    @property
    def tokenizer_name(self) -> str:
        return self.tok.name

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return CHATML_TEMPLATE if chat_template else None

    def get_model_info(self) -> dict:
        info, c = self.loaded.info, self.loaded.model.config
        return {"checkpoint": self.ckpt, "step": info.get("step"), "data_kind": info.get("data_kind"),
                "chat": is_chat(info), "model_num_parameters": self.loaded.model.num_params(), "tokenizer": self.tok.name,
                "shape": f"{c.n_layer}x{c.n_embd}, {c.n_head} heads, context {c.block_size}",
                "requests_cut_to_context": self.cut_requests}

    def _progress(self, what: str, total: int, disable: bool):
        return bar(self.console, what, total, disable=disable)

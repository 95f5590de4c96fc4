"""Autoregressive next-token objective: exact NLL, greedy decoding.

Decoding (`decode`): "state" (default) runs the prompt once (`LM.prefill`, prompts left-padded in a
batch) and then one token at a time through every layer (`LM.step`): a KV cache for attention, the
carried state of the recurrent mixers, the layer's prefix rerun for a mixer without a step of its own.
"rerun" is the reference: the whole prefix through the whole model for every new token. Both give
the same tokens (tests/test_decode.py); `decode_path` says which ran, for the results row.

With a task's `constraints` (e.g. JSQuAD's `answer_constraint=span`), every step's argmax is taken over
the ids the prompt's constraint allows after the answer so far: exact, greedy, left to right.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from core.data import Batch, padded_rows, upload
from harness.loss import token_nll
from harness.objectives import AnswerConstraint, NLLSums, Objective, allowed_mask, cut_at_eos, register

DECODES = ("state", "rerun")


@register("autoregressive")
class Autoregressive(Objective):
    causal = True
    ppl_key = "ppl"
    pretrain_opts = {"loss_on": "all"}  # next-token loss on every token
    constraint_path = "exact: each token the argmax over the ids the constraint allows after the answer so far"

    @dataclasses.dataclass
    class Options:
        loss_on: str = "all"  # "all" real tokens, or "answer": only the task's target tokens
        decode: str = "state"  # greedy decoding: "state" (prefill + carried state) | "rerun" (the prefix per token)

    def __init__(self, opts, special, loss_impl):
        super().__init__(opts, special, loss_impl)
        if opts.loss_on not in ("all", "answer"):
            raise ValueError(f"autoregressive: loss_on must be 'all' or 'answer', got {opts.loss_on!r}")
        if opts.decode not in DECODES:
            raise ValueError(f"autoregressive: decode must be one of {', '.join(DECODES)}, got {opts.decode!r}")

    def _nll(self, model, batch: Batch, use: torch.Tensor, by_row: bool = False):
        """NLL of predicting ids[:, t+1] from the prefix at every position whose next token is real
        (pads get no logits), times `use`: (n,) fp32, n = real tokens - rows. Callers sum it. `by_row`:
        ((n,) terms, (B,) each row's sum of them).

        The positions are picked without a host-device sync: their number is known on the host
        (`batch.n_tokens` minus one per row: rows are right-padded and never empty), and a stable
        sort of the pad flags puts them first, in order. Targets outside `use` are masked (not
        indexed out), so nothing data-dependent is read back either.
        """
        h = model(batch.ids, batch.pad_mask, right_padded=True)[:, :-1]  # (B, T-1, D)
        real = batch.pad_mask[:, 1:].reshape(-1)  # (B*(T-1),) the next token is real
        n = batch.n_tokens - batch.ids.shape[0]
        pos = (~real).to(torch.uint8).argsort(stable=True)[:n]  # (n,) flat positions, pads excluded
        h = h.reshape(-1, h.shape[-1]).index_select(0, pos)  # (n, D)
        u = use.reshape(-1).index_select(0, pos)
        y = batch.ids[:, 1:].reshape(-1).index_select(0, pos).masked_fill(~u, 0)
        out = token_nll(h, model.head_weight, y, self.loss_impl) * u
        if not by_row:
            return out
        # (B,) each row's sum: flat position p is row p // (T-1); added on the device, no read back
        rows = torch.zeros(batch.ids.shape[0], dtype=out.dtype, device=out.device)
        return out, rows.index_add_(0, pos // max(batch.ids.shape[1] - 1, 1), out)

    def _use(self, batch: Batch, answer_only: bool) -> torch.Tensor:
        use = batch.pad_mask[:, 1:]
        return use & batch.target[:, 1:] if answer_only else use

    def loss(self, model, batch: Batch, generator=None) -> torch.Tensor:
        s, n = self.loss_terms(model, batch, generator)
        return s / n.clamp_min(1)

    def loss_terms(self, model, batch: Batch, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed NLL, number of loss tokens): the mean over tokens, not over rows or ranks."""
        use = self._use(batch, self.opts.loss_on == "answer")
        return self._nll(model, batch, use).sum(), use.sum()

    def nll(self, model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        use = self._use(batch, True)
        return self._nll(model, batch, use).sum(), use.sum()

    def nll_with_variance(self, model, batch: Batch) -> NLLSums:
        """`nll` (the same sum, to the bit), exact (no variance), with each row's share of it."""
        use = self._use(batch, True)
        terms, rows = self._nll(model, batch, use, by_row=True)
        return NLLSums(terms.sum(), use.sum(), None, rows)

    @torch.no_grad()
    def predict_targets(self, model, batch: Batch) -> torch.Tensor:
        """Teacher-forced argmax: the prediction for position t comes from the prefix < t."""
        h = model(batch.ids, batch.pad_mask, right_padded=True)
        pred = model.logits(h[:, :-1]).argmax(-1)  # (B, T-1): prediction for positions 1..T-1
        return torch.cat([batch.ids[:, :1], pred], dim=1)

    def decode_path(self, model) -> str:
        if self.opts.decode == "rerun":
            return "rerun: the whole prefix through the model per token"
        paths = model.decode_paths()
        if paths == ["state"]:
            return "state: prefill, then one token per step (KV cache / carried state)"
        return "state with rerun fallback: mixers without a step rerun their layer's prefix per token"

    @torch.no_grad()
    def generate(self, model, prompts: list[list[int]], max_new: int, batch_size: int,
                 constraints: Sequence[AnswerConstraint] | None = None) -> list[list[int]]:
        """Greedy decoding, batched; the path is `opts.decode` (see the module doc). No new token (`max_new`
        0) is no answer, with no pass over the prompts (the state path would otherwise prefill for nothing).
        Under `constraints`, an answer that `max_new` stopped is cut back to where its constraint lets an
        answer end (`longest_answer`; one that ended at EOS is already such an answer)."""
        if max_new < 1:
            return [[] for _ in prompts]
        run = self.generate_rerun if self.opts.decode == "rerun" else self.generate_state
        out = run(model, prompts, max_new, batch_size, constraints)
        if constraints:  # an answer stopped by max_new, not by EOS, may end inside a character: whole ones only
            out = [c.longest_answer(a) for c, a in zip(constraints, out)]
        return out

    @staticmethod
    def _pick(logits: torch.Tensor, cons: list[AnswerConstraint] | None, answers: list[list[int]]) -> torch.Tensor:
        """(b,) greedy ids from (b, V) logits; under constraints, among each row's allowed ids only, and the
        ids are appended to the host-side `answers` (one read back per step: evaluation only)."""
        if cons is None:
            return logits.argmax(-1)
        m = allowed_mask([c.next_tokens(a) for c, a in zip(cons, answers)], logits.shape[-1], logits.device)
        nxt = logits.float().masked_fill(~m, float("-inf")).argmax(-1)
        for a, v in zip(answers, nxt.tolist()):
            a.append(v)
        return nxt

    @torch.no_grad()
    def generate_state(self, model, prompts: list[list[int]], max_new: int, batch_size: int,
                       constraints: Sequence[AnswerConstraint] | None = None) -> list[list[int]]:
        """Greedy decoding with carried state: prompts left-padded (so every row's next token is the
        last column), one `LM.prefill`, then one `LM.step` per token for the whole batch. A finished
        row is fed PAD as a (harmless, unused) real token until the batch ends."""
        out: list[list[int]] = [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        dev, pad, eos = model.head_weight.device, self.special.pad, self.special.eos
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            T = max(len(prompts[i]) for i in idx)
            ids = padded_rows([prompts[i] for i in idx], T, pad, dev, left=True)  # one upload, queued
            pad_mask = None
            if any(len(prompts[i]) < T for i in idx):
                lens = upload(np.array([len(prompts[i]) for i in idx]), dev)
                pad_mask = torch.arange(T, device=dev)[None] >= (T - lens)[:, None]  # (b, T) left padding
            cons = [constraints[i] for i in idx] if constraints else None
            answers: list[list[int]] = [[] for _ in idx]  # picks a constraint sees (done: EOS, then EOS)
            h, states = model.prefill(ids, pad_mask)
            nxt = self._pick(model.logits(h[:, -1]), cons, answers)  # (b,)
            done = torch.zeros(len(idx), dtype=torch.bool, device=dev)
            gen = []
            for t in range(max_new):
                nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
                gen.append(nxt)
                done |= nxt == eos
                if t == max_new - 1 or bool(done.all()):
                    break
                h, states = model.step(nxt, states)
                nxt = self._pick(model.logits(h), cons, answers)
            rows = torch.stack(gen, 1).tolist() if gen else [[] for _ in idx]
            for r, i in enumerate(idx):
                out[i] = cut_at_eos(rows[r], eos)
        return out

    @torch.no_grad()
    def generate_rerun(self, model, prompts: list[list[int]], max_new: int, batch_size: int,
                       constraints: Sequence[AnswerConstraint] | None = None) -> list[list[int]]:
        """Greedy decoding, batched with right padding, rerunning the whole prefix for every token (no
        cache, no state): the reference `generate_state` is tested against."""
        out: list[list[int]] = [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        dev = model.head_weight.device
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            lens = upload(np.array([len(prompts[i]) for i in idx]), dev)
            width = max(len(prompts[i]) for i in idx) + max_new
            buf = padded_rows([prompts[i] for i in idx], width, self.special.pad, dev)
            done = torch.zeros(len(idx), dtype=torch.bool, device=dev)
            rows = torch.arange(len(idx), device=dev)
            cons = [constraints[i] for i in idx] if constraints else None
            answers: list[list[int]] = [[] for _ in idx]
            for _ in range(max_new):
                T = int(lens.max())
                pad_mask = torch.arange(T, device=dev)[None] < lens[:, None]
                h = model(buf[:, :T], pad_mask, right_padded=True)
                nxt = self._pick(model.logits(h[rows, lens - 1]), cons, answers)  # (b,)
                nxt = torch.where(done, torch.full_like(nxt, self.special.pad), nxt)
                buf[rows, lens] = nxt
                lens = lens + (~done).long()
                done |= nxt == self.special.eos
                if bool(done.all()):
                    break
            for r, i in enumerate(idx):
                gen = buf[r, len(prompts[i]) : int(lens[r])].tolist()
                out[i] = cut_at_eos(gen, self.special.eos)
        return out

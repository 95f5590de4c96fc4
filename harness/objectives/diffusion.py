"""Masked diffusion (LLaDA, arXiv 2502.09992; MDLM, arXiv 2406.07524): 1/t-weighted masked-token
loss, a low-confidence-remasking sampler, and an ELBO upper bound on perplexity.

Forward process. Per sequence a mask ratio p = (1 - eps) t + eps, t ~ U(0, 1), so p ~ U[eps, 1];
every maskable token becomes MASK independently with probability p. The mixers run bidirectionally
(no time input: the number of MASKs tells the network how noisy its input is).

Training loss (the ELBO form). Per sequence, sum over masked positions of CE / p, divided by the
number of maskable positions, then the batch mean. `mask_on` says which positions are maskable:
- "answer" (supervised form, LLaDA SFT): the task's target tokens only; the prompt (context and
  question) is never masked.
- "all" (pre-training form): every real token, prompt included.
Output layer (the tied head over V classes: the step's largest matmul). Only masked positions count,
so in the "answer" form the step runs it on the answer region alone: W columns per row, the region's
first, with W a bound the host already knows (`region_width`: max(the batch's most targets in a
row, gen_length)), so no step reads the region size back from the device. On JSQuAD that is
gen_length of a row's ~170 positions. Positions outside the gather are unmasked, which add 0 to the
loss and its gradient in the full-width form too: the loss and gradients are the same numbers.
"all" (every position maskable) and batches without the bound (`max_target` -1) run full width.

EOS filler (`eos_fill`, the documented policy). A task's target that ends its sequence (a QA answer
and its EOS) is extended *on device* with EOS tokens up to `gen_length` positions, as LLaDA's SFT
pads responses with EOS. The filler is maskable and counted in the loss like the answer: that is how
the model learns to emit EOS after the answer, so the fixed-length sampler can end early, and it
makes the training layout (prompt + exactly L answer-region tokens) the one the sampler sees. Targets
that are not a suffix (MQAR's interleaved values) get no filler. Sequences are extended by
`gen_length` columns (a static shape: no host-device sync); columns past a row's end are padding.

Perplexity bound (`nll`, reported as `ppl_bound`). -log p(answer region | prompt) is bounded by
E_t[(1/t) sum_{masked} CE]; equivalently (LLaDA's low-variance form) by
E_{m ~ U{1..n}}[(n/m) sum over a uniformly random size-m subset of the n region positions of CE].
We use the latter with `nll_samples` samples per sequence, m stratified over the samples, from a
local generator seeded with `nll_seed` and the batch's contents (deterministic for given weights and
batches, independent across batches; the global RNG is untouched).
The region includes the EOS filler, so the bound is on -log p(answer + EOS + filler | prompt) >=
-log p(answer | prompt) for a model whose answer region always has L positions (it never conditions on
the answer's length). The count it is divided by is the number of target tokens (answer + EOS), the
same as the autoregressive perplexity's, so exp(sum / count) is an upper bound on the per-target-token
perplexity. It is a bound: never put it in the same column as an exact `ppl`. The trainer's dev checks
(checkpoint selection) use the same estimator with `dev_nll_samples` (2) samples, `selection_nll`:
any K gives an unbiased estimate of the same bound, and a fixed seed makes it a deterministic function
of the weights, so 2 samples rank checkpoints at a quarter of the cost; the reported number keeps 8.
The fixed seed hides the estimate's Monte Carlo error, it does not remove it: another seed moves the
number by a similar amount for every checkpoint (the same masks), so rankings hold better than levels.
`nll_with_variance` estimates that error from the samples themselves, and the row reports it
(`metrics.nll_mc_se`, nats per target token), so a bound is read with its own uncertainty.

Sampler (`generate`). The answer region starts as `gen_length` MASKs after the prompt. Over `steps`
steps (split evenly over blocks of `block_length` positions, left to right, when semi-autoregressive),
each step predicts every masked position of the current block and commits the scheduled number of
them, the most confident first ("low_confidence" remasking) or at random ("random"); the rest stay
masked. The answer is the region's text before its first EOS; a row is finished as soon as an EOS is
committed with every position before it committed (later commits cannot change the answer). Its random
draws (temperature > 0, random remasking) come from a local generator seeded with `seed` and the batch's
prompts, as the bound's are: independent across batches, the same answers for the same prompts. Under an
answer constraint (JSQuAD's `answer_constraint=span`) the region fills left to right, one position per
block, so the rule applies exactly (`constrained_order`; "confidence" keeps `block_length`'s order, with
relaxed masks and a cut afterwards).
MASK and PAD are never proposed, so every committed position holds a real token.

What the numbers mean. The training loss is per maskable token (region + filler); the dev loss the
trainer logs, and `ppl_bound`, are per target token: the two curves are on different scales. The
mixer must know positions in bidirectional mode (the skeleton adds no position embedding): the
sampler starts from identical MASK inputs, which a position-blind mixer cannot tell apart
(tests/test_diffusion.py checks this for every registered mixer).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch

from core.data import Batch, padded_rows, upload
from harness.loss import token_nll
from harness.objectives import AnswerConstraint, NLLSums, Objective, allowed_mask, cut_at_eos, register

MASK_ON = ("answer", "all")
REMASKING = ("low_confidence", "random")
CONSTRAINED_ORDERS = ("left_to_right", "confidence")  # how the region fills under an answer constraint


def _generator(device: torch.device, seed: int, batch_hash: int) -> torch.Generator:
    """A local generator (the global RNG untouched) for one batch: `seed` mixed with the batch's hash, so
    batches draw independently and the same batch always draws the same. The bound (`_batch_hash`,
    read from the device) and the sampler (`_rows_hash`, host ints) both seed this way."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + batch_hash) % (2**63 - 1))


def collapsed_strata_variance(t: torch.Tensor) -> torch.Tensor:
    """(B, K) draws, one per stratum in stratum order (K >= 2) -> (B,) estimated variance of each row's mean.

    Collapsed strata: neighbouring strata are paired (the last three grouped when K is odd) and each
    group's spread counts once for every stratum in it, sum_g g/(g-1) sum_(k in g) (t_k - mean_g)^2 / K^2
    (a pair: (t_a - t_b)^2 / K^2). Why not successive differences over all K (the estimator of rows written
    before commit e37f31c): they weight the first and last strata half as much as the others, and the first
    stratum (1-3 masked tokens of JSQuAD's 24, their loss times 24/m) holds most of the variance: on
    trained models' JSQuAD regions they claimed 0.78-0.79 of the rows' variance over 25 seeds, the pairs
    0.99-1.00 (docs/diffusion-noise.md). The price: a drift of the mean with m within a pair counts as
    spread (small: the drift across all strata is what the plain variance would count)."""
    K = t.shape[1]
    cuts = list(range(0, K - 1, 2)) + [K]  # K = 8: 0 2 4 6 8; K = 9: 0 2 4 6 9
    var = sum(t[:, a:b].var(1) * (b - a) for a, b in zip(cuts, cuts[1:]))  # g/(g-1) sum (t - mean_g)^2
    return var / K ** 2


def _rows_hash(rows: Sequence[Sequence[int]]) -> int:
    """A position-weighted hash of a batch's prompts (host ints: no device read), mixed into the
    sampler's seed. Seeding with `seed` alone made every batch replay one random stream: row r of every
    batch drew the same Gumbel noise and remasking scores, so the answers' randomness was shared across
    batches (correlated errors in EM/F1 instead of averaging out): the sampler's twin of the bound's
    seeding bug (`MaskedDiffusion._batch_hash`). Greedy low-confidence sampling (the default) draws nothing."""
    return sum(r * sum(j * (t + 1) for j, t in enumerate(row, 1)) for r, row in enumerate(rows, 1))


@dataclasses.dataclass(frozen=True)
class Region:
    """A batch with the EOS filler appended: what the forward process corrupts. Shapes (B, T')."""

    ids: torch.Tensor  # long, filler positions hold EOS
    pad_mask: torch.Tensor  # bool, True on real tokens (filler included)
    target: torch.Tensor  # bool, the answer region: targets + filler
    n_target: torch.Tensor  # (B,) the task's own target tokens (answer + EOS), filler excluded


def extend_with_eos(batch: Batch, length: int, eos: int, pad: int) -> Region:
    """Append EOS filler to every row whose target is a suffix, so the region spans >= `length` tokens.

    Static output width T + length; nothing is read back to the host.
    """
    ids, pad_mask, target = batch.ids, batch.pad_mask, batch.target
    n_target = target.sum(1)
    if length <= 0:
        return Region(ids, pad_mask, target, n_target)
    B, T = ids.shape
    dev = ids.device
    lengths = pad_mask.sum(1)  # (B,)
    start = torch.where(target.any(1), target.int().argmax(1), lengths)  # first target position
    suffix = (n_target > 0) & (start + n_target == lengths)
    new_len = torch.where(suffix, torch.maximum(lengths, start + length), lengths)
    pos = torch.arange(T + length, device=dev)[None]  # (1, T')
    filler = (pos >= lengths[:, None]) & (pos < new_len[:, None])  # (B, T')
    ids = torch.cat([ids, ids.new_full((B, length), pad)], 1).masked_fill(filler, eos)
    target = torch.cat([target, target.new_zeros(B, length)], 1) | filler
    return Region(ids, pos < new_len[:, None], target, n_target)


def region_columns(region: Region, width: int) -> torch.Tensor:
    """(B, width) column indices per row, the answer region's first and in order (a stable sort of the
    non-region flags): what goes through the output layer when only region positions can be scored."""
    return (~region.target).int().argsort(dim=1, stable=True)[:, :width]


def sample_mask_ratio(n: int, eps: float, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """(n,) mask probabilities p = (1 - eps) t + eps, t ~ U(0, 1): never 0, so 1/p stays bounded."""
    t = torch.rand(n, device=device, generator=generator)
    return (1 - eps) * t + eps


def mask_independently(maskable: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(B, T) bool: each maskable position masked independently with its row's probability p (B,)."""
    u = torch.rand(maskable.shape, device=maskable.device, generator=generator)
    return maskable & (u < p[:, None])


def mask_exactly(maskable: torch.Tensor, m: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(B, T) bool: a uniformly random subset of exactly m[b] maskable positions per row (static shapes:
    random keys, maskable ones ranked first, the m smallest ranks masked)."""
    keys = torch.rand(maskable.shape, device=maskable.device, generator=generator).masked_fill(~maskable, 2.0)
    rank = keys.argsort(1).argsort(1)
    return maskable & (rank < m[:, None])


def transfer_schedule(n: int, steps: int) -> list[int]:
    """How many of n masked positions each of `steps` steps commits: as even as possible, the remainder
    first (a linear schedule: the same expected number of tokens per step). Zeros when steps > n."""
    base, rem = divmod(n, steps)
    return [base + (i < rem) for i in range(steps)]


@register("diffusion")
class MaskedDiffusion(Objective):
    causal = False
    ppl_key = "ppl_bound"
    RELAXED_SAMPLER = ("relaxed while sampling: the first position proposes only ids an answer may start with, every "
                       "other only ids that occur in some allowed answer (positions are filled in confidence order, "
                       "not left to right)")
    RELAXED = RELAXED_SAMPLER + "; then exact: the answer is cut to its longest prefix that is an allowed answer"
    LEFT_TO_RIGHT = ("exact: positions filled left to right (blocks of one position), each proposing only the ids "
                     "the constraint allows after the answer so far")
    pretrain_opts = {"mask_on": "all", "eos_fill": False}  # LLaDA pre-training: any token maskable, no filler

    @dataclasses.dataclass
    class Options:
        mask_on: str = "answer"  # "answer": supervised (prompt never masked) | "all": pre-training form
        eps: float = 1e-3  # smallest mask ratio
        eos_fill: bool = True  # pad suffix targets with EOS up to gen_length (see the module docstring)
        gen_length: int = 24  # L: answer-region length of the sampler (and of the EOS filler)
        steps: int = 24  # S: sampler steps in all (best quality near steps = gen_length)
        block_length: int = 0  # semi-autoregressive blocks of this many positions; 0: one block
        # under an answer constraint: "left_to_right" (blocks of one position: the rule applies exactly) or
        # "confidence" (block_length's order: the relaxed masks, then the cut); free answers keep block_length
        constrained_order: str = "left_to_right"
        remasking: str = "low_confidence"  # low_confidence | random
        temperature: float = 0.0  # 0: greedy predictions; > 0: Gumbel-max sampling from the seeded generator
        seed: int = 0  # sampler seed (random remasking, temperature > 0), mixed with each batch's prompts
        nll_samples: int = 8  # Monte Carlo samples per sequence of the perplexity bound
        dev_nll_samples: int = 2  # the same bound with fewer samples: the dev checks' selection estimate
        nll_seed: int = 1234  # fixed: the dev loss of the same weights is the same number every time

        def __post_init__(self):
            if self.mask_on not in MASK_ON:
                raise ValueError(f"diffusion: mask_on must be one of {', '.join(MASK_ON)}; got {self.mask_on!r}")
            if self.remasking not in REMASKING:
                raise ValueError(f"diffusion: remasking must be one of {', '.join(REMASKING)}; got {self.remasking!r}")
            if self.constrained_order not in CONSTRAINED_ORDERS:
                raise ValueError(f"diffusion: constrained_order must be one of {', '.join(CONSTRAINED_ORDERS)}; "
                                 f"got {self.constrained_order!r}")
            if not 0 <= self.eps < 1:
                raise ValueError(f"diffusion: eps must be in [0, 1); got {self.eps}")
            if min(self.gen_length, self.steps, self.nll_samples, self.dev_nll_samples) < 1 or self.temperature < 0:
                raise ValueError("diffusion: gen_length, steps, nll_samples and dev_nll_samples must be >= 1, "
                                 "temperature >= 0")
            block = self.block_length or self.gen_length
            if self.gen_length % block:
                raise ValueError(f"diffusion: gen_length={self.gen_length} is not a multiple of block_length={block}")
            if self.steps % (self.gen_length // block):
                raise ValueError(f"diffusion: steps={self.steps} must split evenly over {self.gen_length // block} blocks")

    @property
    def constraint_path(self) -> str:
        """Blocks of one position fill the region left to right, so each position's prefix is known when it
        is filled and the constraint applies exactly, as in autoregressive decoding; otherwise positions
        fill in confidence order and only the relaxed form (then the cut) applies."""
        return self.LEFT_TO_RIGHT if self._block(constrained=True) == 1 else self.RELAXED

    def _block(self, constrained: bool) -> int:
        """Positions per semi-autoregressive block: one when a constrained answer fills left to right
        (`constrained_order`, the default: on the dev slice it scored above the relaxed order and its cut,
        and every answer is a span, none empty; docs/span-answers.md), else
        `block_length` (0: the whole region)."""
        o = self.opts
        if constrained and o.constrained_order == "left_to_right":
            return 1
        return o.block_length or o.gen_length

    # ------------------------------------------------------------------ training

    def region(self, batch: Batch) -> Region:
        return extend_with_eos(batch, self.opts.gen_length if self.opts.eos_fill else 0, self.special.eos, self.special.pad)

    def corrupt(self, region: Region, generator: torch.Generator | None = None):
        """Forward process: (noisy ids (B, T'), masked (B, T') bool, p (B,), maskable (B, T') bool)."""
        maskable = region.target if self.opts.mask_on == "answer" else region.pad_mask
        p = sample_mask_ratio(region.ids.shape[0], self.opts.eps, region.ids.device, generator)
        masked = mask_independently(maskable, p, generator)
        return region.ids.masked_fill(masked, self.special.mask), masked, p, maskable

    def _masked_nll(self, model, region: Region, noisy: torch.Tensor, masked: torch.Tensor,
                    cols: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T') fp32 CE of the clean token at masked positions, 0 elsewhere (no boolean indexing).

        With `cols` (B, W), only those columns go through the output layer and (B, W) comes back, so the
        prompt gets no logits: the evaluation path sizes W from the region (one host read), the training
        step from a host-side bound (`region_width`, no read). Every masked position must be in `cols`.
        """
        h = model(noisy, region.pad_mask, right_padded=True)  # (B, T', D)
        y = region.ids
        if cols is not None:
            h = h.gather(1, cols[..., None].expand(-1, -1, h.shape[-1]))  # (B, W, D)
            y, masked = y.gather(1, cols), masked.gather(1, cols)
        y = y.masked_fill(~masked, 0)
        nll = token_nll(h.reshape(-1, h.shape[-1]), model.head_weight, y.reshape(-1), self.loss_impl)
        return nll.view_as(y) * masked

    def region_width(self, batch: Batch, width: int) -> int:
        """A host-side bound W on every row's answer-region size (targets + filler), at most `width` (T'):
        what the training step gathers before the output layer. 0: unknown (`batch.max_target` < 0).

        Why every region position fits. `extend_with_eos` makes a row's region either its targets alone
        (a non-suffix target, or no filler): n_target <= max_target positions; or, for a suffix target
        starting at `start` in a row of `len` tokens, positions start .. max(len, start + L) - 1, i.e.
        max(n_target, L) positions (the targets are start .. len - 1, so len - start = n_target). Hence
        n <= max(max_target, L), with L = gen_length when the filler is on and 0 otherwise. Known on the
        host (`SeqSet.batch` fills max_target from counts made once), so no step reads the device."""
        if batch.max_target < 0:
            return 0
        L = self.opts.gen_length if self.opts.eos_fill else 0
        return max(1, min(width, max(batch.max_target, L)))  # >= 1: no empty head input (no targets)

    def loss(self, model, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        region = self.region(batch)
        noisy, masked, p, maskable = self.corrupt(region, generator)
        cols = None  # mask_on="all" (or an unknown bound): the output layer on every position
        W = self.region_width(batch, region.ids.shape[1]) if self.opts.mask_on == "answer" else 0
        if W:  # only region positions can be masked: their columns first (stable: in order), W per row
            cols = region_columns(region, W)
        nll = self._masked_nll(model, region, noisy, masked, cols)  # (B, T') or (B, W); 0 where unmasked
        per_seq = (nll / p[:, None]).sum(1) / maskable.sum(1).clamp_min(1)  # ELBO per maskable token
        return per_seq.mean()

    # ------------------------------------------------------------------ the perplexity bound

    def nll(self, model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed upper bound on -log p(answer region | prompt), number of target tokens)."""
        return self._bound(model, batch, self.opts.nll_samples)

    def nll_with_variance(self, model, batch: Batch) -> NLLSums:
        """`nll`, each row's share of it (its mean over the K draws), and the variance of its sum over the
        mask draws, estimated from its own `nll_samples` samples at no extra forward pass (None with one
        sample). A row's K terms are independent draws, one per stratum of m, and rows are independent, so
        Var(sum) = sum_rows Var(mean_k term), each row's from its collapsed strata
        (`collapsed_strata_variance`: neighbouring strata paired). The plain
        sample variance over k would also count how the term's mean drifts with m, which stratification
        removes; successive differences over all K weight the first stratum, where most of the variance
        sits, half. Against the variance of each row's bound over 100 seeds it claims 0.93-1.01 on two
        test denoisers (tests/test_diffusion.py) and 0.99-1.00 on trained JSQuAD models over 25 seeds
        (docs/diffusion-noise.md). At K = 2 it is the plain variance, and a term that drifts with m made it
        overstate 1.6x (the selection's K; the reported bound's is 8)."""
        return self._bound(model, batch, self.opts.nll_samples, variance=True)

    def selection_nll(self, model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The same bound from `dev_nll_samples` samples (same seed): the dev checks' cheap estimate."""
        return self._bound(model, batch, self.opts.dev_nll_samples)

    def _batch_hash(self, batch: Batch) -> torch.Tensor:
        """() int64 on the device: a position-weighted hash of the batch's ids, mixed into the bound's seed
        with `nll_seed`, so the same weights and batch always give the same number.

        Why not `nll_seed` alone: every batch then replayed one random stream, so row i of every batch of
        the same shape drew the same stratum offset and mask scores, and the batches' Monte Carlo errors
        added up instead of averaging out. On a trained model's 500 evaluation questions (16 batches) the
        bound's spread over 12 seeds was 0.095 nats that way and 0.054 with a seed per batch, where the
        samples' own estimate (`nll_with_variance`) said 0.057 (docs/diffusion-noise.md).
        Identical batches still share their draws (a rare case: the same rows, in the same order)."""
        ids = batch.ids.long()
        weights = torch.arange(1, ids.shape[1] + 1, device=ids.device)  # (T,): a permuted row hashes differently
        rows = torch.arange(1, ids.shape[0] + 1, device=ids.device)  # (B,): so does a permuted batch
        return ((ids + 1) * weights).sum(1).mul(rows).sum()

    def _bound(self, model, batch: Batch, K: int, variance: bool = False):
        """(summed bound, target count); with `variance`, `NLLSums`: its estimated Monte Carlo variance too
        (None at K = 1) and each row's bound."""
        region = self.region(batch)
        dev = region.ids.device
        n = region.target.sum(1)  # (B,) region size, filler included
        # one host read: the batch's hash (the seed) and the largest region (the columns scored: the region's
        # columns first, stable, in order)
        h, n_max = torch.stack([self._batch_hash(batch), n.max()]).tolist()
        gen = _generator(dev, self.opts.nll_seed, h)
        cols = region_columns(region, max(n_max, 1))
        u = torch.rand(n.shape[0], device=dev, generator=gen)  # stratification offset per row
        total = torch.zeros((), device=dev)
        terms = []  # (B,) per sample: each row's estimate of its summed bound
        for k in range(K):
            m = (((k + u) / K) * n).floor().long().add(1).clamp(min=1).minimum(n.clamp_min(1))  # m ~ U{1..n}
            masked = mask_exactly(region.target, m, gen)
            nll = self._masked_nll(model, region, region.ids.masked_fill(masked, self.special.mask), masked, cols)
            term = nll.sum(1) * n / m
            total = total + term.sum()
            terms.append(term)
        if not variance:
            return total / K, region.n_target.sum()
        draws = torch.stack(terms, 1)  # (B, K)
        var = None if K == 1 else collapsed_strata_variance(draws).sum()
        return NLLSums(total / K, region.n_target.sum(), var, draws.mean(1))

    # ------------------------------------------------------------------ prediction and sampling

    def _logits(self, model, h: torch.Tensor) -> torch.Tensor:
        """fp32 logits with MASK and PAD ruled out: a filled position is always a real token."""
        logits = model.logits(h).float()
        # (two integer indices, not a list: a list is a tensor uploaded at every sampler step)
        logits[..., self.special.mask] = float("-inf")
        logits[..., self.special.pad] = float("-inf")
        return logits

    @torch.no_grad()
    def predict_targets(self, model, batch: Batch) -> torch.Tensor:
        """One step: every target position (and the EOS filler, if any) masked, argmax everywhere."""
        region = self.region(batch)
        noisy = region.ids.masked_fill(region.target, self.special.mask)
        h = model(noisy, region.pad_mask, right_padded=True)[:, : batch.ids.shape[1]]
        return torch.where(batch.target, self._logits(model, h).argmax(-1), batch.ids)

    @torch.no_grad()
    def sample(self, model, prompts: list[list[int]], early_stop: bool = True,
               constraints: Sequence[AnswerConstraint] | None = None) -> torch.Tensor:
        """Denoise a `gen_length` answer region after each prompt: (b, L) ids. With early_stop, positions
        after a row's settled first EOS may still be MASK (they cannot change the answer).

        With `constraints` (one per prompt), the region's first position proposes only the ids an answer may
        start with (`next_tokens([])`: its prefix is always empty) and every other position only ids of its
        row's `tokens()`: positions are filled in confidence order, not left to right, so the prefix rule
        does not apply past the first; the answer's tokens then each occur in an allowed answer, their
        order is not enforced here (`generate` cuts each answer to what its constraint allows): the
        `constrained_order=confidence` path. With blocks of one position (`constrained_order=left_to_right`,
        the default under a constraint, or `block_length=1`) the region fills left to right, and each position
        proposes only the ids its row's constraint allows after the committed prefix: exact."""
        o, sp = self.opts, self.special
        dev = model.head_weight.device
        L, block = o.gen_length, self._block(constrained=bool(constraints))
        b = len(prompts)
        lens = upload(np.array([len(p) for p in prompts]), dev)
        buf = padded_rows(prompts, max(len(p) for p in prompts) + L, sp.pad, dev)  # one upload, queued
        slots = lens[:, None] + torch.arange(L, device=dev)  # (b, L) region positions
        buf.scatter_(1, slots, sp.mask)
        pad_mask = torch.arange(buf.shape[1], device=dev)[None] < (lens + L)[:, None]
        # (greedy low-confidence sampling draws nothing: no hash, ~4 ms of host time for 128 prompts of 300 ids)
        gen = _generator(dev, o.seed, _rows_hash(prompts) if o.temperature > 0 or o.remasking == "random" else 0)
        committed = torch.zeros(b, L, dtype=torch.bool, device=dev)
        pos = torch.arange(L, device=dev)
        banned = None  # (b, L, V) True where a row's constraint rules an id out at a region position
        if constraints:
            V = model.head_weight.shape[0]
            first = allowed_mask([c.next_tokens([]) for c in constraints], V, dev)  # (b, V)
            later = allowed_mask([c.tokens() for c in constraints], V, dev)
            banned = ~torch.cat([first[:, None], later[:, None].expand(-1, L - 1, -1)], 1)  # (b, L, V), own memory
        for lo in range(0, L, block):
            in_block = (pos >= lo) & (pos < lo + block)
            if banned is not None and block == 1 and lo > 0:  # left to right: this position's prefix is known
                prefix = buf.gather(1, slots[:, :lo]).tolist()  # (one read back per position: evaluation only)
                banned[:, lo] = ~allowed_mask([c.next_tokens(p) for c, p in zip(constraints, prefix)], V, dev)
            # (at least one step per block: a constrained region filled left to right takes L steps, whatever `steps`)
            for k in transfer_schedule(block, max(1, o.steps // (L // block))):
                if k == 0:
                    continue
                h = model(buf, pad_mask, right_padded=True)
                h = h.gather(1, slots[..., None].expand(-1, -1, h.shape[-1]))  # (b, L, D)
                logits = self._logits(model, h)  # (b, L, V)
                if banned is not None:
                    logits = logits.masked_fill(banned, float("-inf"))
                x0, conf = self._propose(logits, gen)
                conf = conf.masked_fill(committed | ~in_block, float("-inf"))
                newly = torch.zeros_like(committed).scatter_(1, conf.topk(k, dim=1).indices, True)
                region = torch.where(newly, x0, buf.gather(1, slots))
                buf.scatter_(1, slots, region)
                committed |= newly
                if early_stop and bool(self._settled(region, committed).all()):
                    return region
        return buf.gather(1, slots)

    def _propose(self, logits: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Token proposal x0 and the score deciding commit order, both (b, L)."""
        o = self.opts
        if o.temperature > 0:  # Gumbel-max: a draw from softmax(logits / temperature)
            u = torch.rand(logits.shape, device=logits.device, generator=gen).clamp_min(1e-20)
            x0 = (logits / o.temperature - torch.log(-torch.log(u))).argmax(-1)
        else:
            x0 = logits.argmax(-1)
        if o.remasking == "low_confidence":
            conf = logits.softmax(-1).gather(-1, x0[..., None]).squeeze(-1)
        else:
            conf = torch.rand(x0.shape, device=logits.device, generator=gen)
        return x0, conf

    def _settled(self, region: torch.Tensor, committed: torch.Tensor) -> torch.Tensor:
        """(b,) True where the answer can no longer change: all committed, or a committed EOS with every
        position before it committed."""
        L = region.shape[1]
        eos = committed & (region == self.special.eos)
        first = torch.where(eos.any(1), eos.int().argmax(1), torch.full_like(eos[:, 0], L, dtype=torch.long))
        before = torch.arange(L, device=region.device)[None] < first[:, None]
        return ~(before & ~committed).any(1)

    @torch.no_grad()
    def generate(self, model, prompts: list[list[int]], max_new: int, batch_size: int,
                 constraints: Sequence[AnswerConstraint] | None = None) -> list[list[int]]:
        """Answers cut before the first EOS and to `max_new` tokens; batched by prompt length. No new token
        (`max_new` 0) is no answer, with no sampling (the whole region would be denoised, then cut away).
        Under `constraints`, each answer is then cut to the longest prefix its constraint allows
        (`longest_answer`): in confidence order the sampler's masks keep the ids right but not their order;
        left to right the answer is allowed already, and only a cut at `max_new` can change it."""
        out: list[list[int]] = [[] for _ in prompts]
        if max_new < 1:
            return out
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            cons = [constraints[i] for i in idx] if constraints else None
            region = self.sample(model, [prompts[i] for i in idx], constraints=cons).tolist()
            for r, i in enumerate(idx):
                out[i] = cut_at_eos(region[r], self.special.eos)[:max_new]
                if cons:  # the sampler could not enforce the order: keep what reads as an allowed answer
                    out[i] = cons[r].longest_answer(out[i])
        return out

    def decode_path(self, model) -> str:
        """No cache: the mixers are bidirectional, so every position (the prompt's included) changes
        whenever an answer-region token is committed; nothing computed at one step stays valid."""
        return "rerun: bidirectional, the whole sequence at every sampler step (no cache)"

    def describe(self) -> dict[str, Any]:
        o = self.opts
        return {
            **super().describe(),
            "policy": {
                "eos_filler": (f"suffix targets padded with EOS to {o.gen_length} tokens; filler masked and "
                               "counted in the loss and in the bound's region, not in its token count")
                if o.eos_fill else "none: the region is the target alone (the bound then conditions on its length)",
                "ppl_bound": f"ELBO, m ~ U{{1..n}} masked of n region tokens, weight n/m, {o.nll_samples} "
                             f"stratified samples, seed {o.nll_seed}; per target token (answer + EOS)",
                "dev_loss": f"the same bound from {o.dev_nll_samples} samples (checkpoint selection only)",
            },
        }

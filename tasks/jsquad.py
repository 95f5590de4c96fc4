"""JSQuAD (JGLUE) extractive QA as generation: context + question -> answer span text.

Data protocols (named in every results row and report):
- `jsquad`          official: train on `train-v1.3`, evaluate on `valid-v1.3` (JGLUE's dev set,
                    the usual reporting split). Fetched from JGLUE's GitHub with `datasets` when no
                    directory is given, or read from a directory that holds `train-v1.3.json`.
- `jsquad-offline`  for machines without the train split: train on `valid-v1.3`, evaluate on
                    `test-v1.3` (disjoint articles). Chosen when the directory has no train file.
- `...+jaquad`       `extra_train=jaquad`: JaQuAD train + dev (tasks/jaquad.py) join the training
                    data, minus the articles sharing a title or paragraph with the held-out text.
Either way a dev slice (whole articles, `dev_frac` of them, fixed seed) is held out from the
training file for checkpoint selection; the evaluation split is only ever scored. `train_frac` < 1
trains on a seeded share of the remaining JSQuAD paragraphs (JaQuAD, when added, stays whole): a smaller
training set at the same budget means more epochs, which is how a CPU run reaches the many-epoch regime
of a GPU budget (docs/pretraining.md). The dev slice, the tokenizer and the evaluation stay those of the
whole file, so cells with any `train_frac` share a vocabulary and their perplexities compare.

The tokenizer is trained on the JSQuAD training split only, also with JaQuAD or pretraining: every
row of a comparison then shares one vocabulary (dev losses and the tokenizer ceiling compare), and
none of its pieces is spent on surface forms the evaluation text does not use (JaQuAD's half-width
punctuation, Aozora's old orthography); byte fallback encodes whatever it has not seen.

Sequence format (ids):  <s> title <sep> paragraph <sep> question <sep> answer </s>
(`order=question_first` puts the question before the title and paragraph.) The answer and its
EOS are the target tokens.

Truncation policy, applied when a sequence exceeds `max_len`:
- training: the paragraph is cut to a character window *around the first gold answer*, so the
  answer is always kept; examples whose answer and question alone do not fit are dropped and
  counted (`train_dropped`), windowed ones are counted (`train_truncated`);
- evaluation: the paragraph keeps its beginning (the answer position is not for the model to know);
  `eval_truncated` counts truncated questions and `eval_answer_cut` those where no gold answer
  survived the cut (a model cannot get them right; they stay in the denominator).

Answers (`answer_constraint`): "none" (default) scores free generation; "span" lets the decoder pick
only answers that are spans of the prompt's title or (kept) paragraph (tasks/answer_span.py), as the
objective's `constraint_path` says (recorded in the row's metrics). Every gold answer of JSQuAD v1.3
is such a span.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.data import SeqSet
from core.env import autocast
from core.results import error_text
from tasks import DataError, Metric, PrepareContext, Reference, Task, TaskData, latency_ms, register
from tasks import jsquad_baselines as jb
from tasks.answer_span import PieceTrie, SpanConstraint
from tasks.jsquad_files import VERSION, QAItem, find_split, load_file, parse_articles
from tasks.jsquad_metric import corpus_scores, score
from tasks.net import reachable
from tasks.tokenizer import JaTokenizer, TokenizerSettings, train_or_load

OFFICIAL_BASE = "https://raw.githubusercontent.com/yahoojapan/JGLUE/main/datasets/jsquad-v1.3"
DEV_SEED = 1234  # the dev slice is the same for every cell and seed
SUBSET_SEED = 4321  # so is the training subset of `train_frac` (another seed: not correlated with the dev pick)
ANSWER_CONSTRAINTS = ("none", "span")
# a prompt's sections in order, each followed by SEP, after BOS: written by `_Encoder._assemble`, read back
# by `JSQuAD.span_constraints`
SECTIONS = {"context_first": ("title", "paragraph", "question"), "question_first": ("question", "title", "paragraph")}


def _online_hint() -> str:
    return ("pass --data-dir DIR with JGLUE JSQuAD files (valid-v1.3.json + test-v1.3.json gives the offline "
            "protocol jsquad-offline; e.g. --data-dir ../shared/data/jsquad-v1.3) or set WAVEBENCH_DATA_DIR")


def fetch_official(cache_dir: Path, base: str = OFFICIAL_BASE) -> dict[str, list[QAItem]]:
    """The official train and valid splits, downloaded and cached by `datasets`."""
    if base.startswith("http"):
        host = base.split("/")[2]
        if not reachable(host):
            raise DataError(f"cannot reach {host} to download JSQuAD (offline?): {_online_hint()}")
    try:
        import datasets
    except ImportError:
        raise DataError("downloading JSQuAD needs the optional `datasets` package "
                        f"(pip install -r requirements-online.txt); or {_online_hint()}") from None

    files = {s: f"{base}/{s}-{VERSION}.json" for s in ("train", "valid")}
    try:
        ds = datasets.load_dataset("json", data_files=files, field="data", cache_dir=str(cache_dir / "datasets"))
    except Exception as e:  # network errors come in many types; the message is what matters
        raise DataError(f"could not download JSQuAD from {base} ({error_text(e, limit=250)}): {_online_hint()}") from None
    return {s: parse_articles(ds[s].to_list(), files[s]) for s in files}


def split_dev(items: list[QAItem], dev_frac: float) -> tuple[list[QAItem], list[QAItem]]:
    """Hold out whole articles (by title) so dev questions never share a paragraph with training."""
    titles = sorted({it.title for it in items})
    if len(titles) < 2:
        raise DataError("the training file has fewer than 2 articles: cannot hold out a dev slice")
    rng = np.random.default_rng(DEV_SEED)
    n_dev = min(len(titles) - 1, max(1, round(dev_frac * len(titles))))
    dev_titles = set(rng.choice(titles, size=n_dev, replace=False).tolist())
    return [it for it in items if it.title not in dev_titles], [it for it in items if it.title in dev_titles]


def keep_paragraphs(items: list[QAItem], frac: float) -> list[QAItem]:
    """A seeded share of the training paragraphs (at least one), every question of each: the same subset for
    every cell and seed, and a smaller share's paragraphs are among a larger share's (they are ranked once),
    so a data-scaling curve adds data rather than swapping it. Paragraphs, not articles: JSQuAD's training
    file has 53 articles of up to 80 paragraphs, too coarse a unit for a tenth of it (and the dev slice, not
    this, is what must not share a paragraph with training)."""
    if frac >= 1:
        return items
    paragraphs = sorted({(it.title, it.paragraph) for it in items})
    order = np.random.default_rng(SUBSET_SEED).permutation(len(paragraphs))
    kept = {paragraphs[i] for i in order[: max(1, round(frac * len(paragraphs)))]}
    return [it for it in items if (it.title, it.paragraph) in kept]


# ----------------------------------------------------------------------------- the task

@register("jsquad")
class JSQuAD(Task):
    metrics = (Metric("em", "EM", "max", doc="exact match (JGLUE normalisation), fraction of questions",
                      axis="EM (exact match, fraction)"),
               Metric("f1", "F1", "max", headline=True, doc="character F1 (JGLUE), mean over questions",
                      axis="F1 (JGLUE character F1, fraction)"))
    protocols = {
        "jsquad": "official JGLUE JSQuAD v1.3: train on `train` (minus a dev slice of whole articles for checkpoint "
                  "selection), evaluate on `valid` (JGLUE's dev set, the split papers report)",
        "jsquad-offline": "JSQuAD v1.3 without its train split: train on `valid` (minus a dev slice of whole articles "
                          "for checkpoint selection), evaluate on `test` (disjoint articles). Not comparable to "
                          "published dev-set scores",
        "jsquad-offline+jaquad": "`jsquad-offline` plus JaQuAD v0.1.0 train + dev (CC BY-SA 3.0) as extra training "
                                 "data, minus its articles sharing a title or paragraph with the held-out text; "
                                 "evaluate on JSQuAD `test`",
        "jsquad+jaquad": "`jsquad` plus JaQuAD v0.1.0 train + dev (CC BY-SA 3.0) as extra training data, minus its "
                         "articles sharing a title or paragraph with the held-out text; evaluate on JSQuAD `valid`",
    }

    @dataclasses.dataclass
    class Options:
        protocol: str = "auto"  # auto | offline | official
        dev_frac: float = 0.1  # share of training-file articles held out for checkpoint selection
        train_frac: float = 1.0  # share of the other JSQuAD training paragraphs trained on (seeded, whole paragraphs)
        vocab_size: int = 0  # 0: the preset's
        normalization: str = "identity"  # SentencePiece normaliser (identity | nmt_nfkc | nfkc)
        order: str = "context_first"  # context_first | question_first
        max_answer_tokens: int = 24
        eval_limit: int = 0  # score a seeded sample of this many questions (0: all)
        latency_n: int = 16  # answers timed one at a time for gen_latency_ms
        extra_train: str = ""  # "jaquad": add JaQuAD train + dev to the training data
        jaquad_dir: str = ""  # JaQuAD's directory ("": jaquad-v0.1.0 beside the JSQuAD data directory)
        answer_constraint: str = "none"  # "none": free generation | "span": answers are spans of the context

        def __post_init__(self):
            for name in ("eval_limit", "latency_n"):
                if getattr(self, name) < 0:
                    raise ValueError(f"jsquad: {name} must be >= 0 (0: all questions / no timing); "
                                     f"got {getattr(self, name)}")
            if self.max_answer_tokens < 1 or self.vocab_size < 0:
                raise ValueError("jsquad: max_answer_tokens must be >= 1 and vocab_size >= 0 (0: the preset's)")
            if not 0 < self.dev_frac < 1:
                raise ValueError(f"jsquad: dev_frac must be in (0, 1); got {self.dev_frac}")
            if not 0 < self.train_frac <= 1:
                raise ValueError(f"jsquad: train_frac must be in (0, 1]; got {self.train_frac}")
            if self.answer_constraint not in ANSWER_CONSTRAINTS:
                raise ValueError(f"jsquad: answer_constraint must be one of {', '.join(ANSWER_CONSTRAINTS)}; "
                                 f"got {self.answer_constraint!r}")

    def grid_tag(self) -> str:
        tags = [] if self.opts.answer_constraint == "none" else [f"answers-{self.opts.answer_constraint}"]
        if self.opts.train_frac < 1:  # another training set: its scores answer another question
            tags.append(f"train-{self.opts.train_frac:g}")
        return "_".join(tags)

    def check_objective(self, objective) -> None:
        if self.opts.answer_constraint != "none" and objective.constraint_path is None:
            raise ValueError(f"jsquad: answer_constraint={self.opts.answer_constraint} needs an objective that decodes "
                             f"under a constraint; {objective.name} does not")

    # -- data
    def _splits(self, ctx: PrepareContext) -> tuple[str, list[QAItem], list[QAItem], dict[str, str]]:
        o = self.opts
        if o.protocol not in ("auto", "offline", "official"):
            raise ValueError(f"jsquad: protocol must be auto, offline or official; got {o.protocol!r}")
        if ctx.data_dir is None:
            if o.protocol == "offline":
                raise DataError(f"the offline protocol reads local files: {_online_hint()}")
            got = fetch_official(ctx.cache_dir)
            return "jsquad", got["train"], got["valid"], {"train": f"{OFFICIAL_BASE}/train-{VERSION}.json",
                                                          "eval": f"{OFFICIAL_BASE}/valid-{VERSION}.json"}
        d = Path(ctx.data_dir)
        if not d.is_dir():
            raise DataError(f"{d}: data directory not found; {_online_hint()}")
        train, valid, test = (find_split(d, s) for s in ("train", "valid", "test"))
        official = train is not None and valid is not None
        if o.protocol == "official" or (o.protocol == "auto" and official):
            if not official:
                raise DataError(f"{d}: the official protocol needs train-{VERSION}.json and valid-{VERSION}.json")
            return "jsquad", load_file(train), load_file(valid), {"train": str(train), "eval": str(valid)}
        if valid is None or test is None:
            missing = [f"{s}-{VERSION}.json" for s, p in (("valid", valid), ("test", test)) if p is None]
            raise DataError(f"{d}: no {' or '.join(missing)} (the offline protocol trains on valid, evaluates on test)")
        return "jsquad-offline", load_file(valid), load_file(test), {"train": str(valid), "eval": str(test)}

    def prepare(self, ctx: PrepareContext) -> TaskData:
        o = self.opts
        if o.order not in SECTIONS:
            raise ValueError(f"jsquad: order must be context_first or question_first; got {o.order!r}")
        protocol, train_items, eval_items, files = self._splits(ctx)
        train_items, dev_items = split_dev(train_items, o.dev_frac)
        texts = sorted({t for it in train_items for t in (it.title, it.paragraph)}) + [it.question for it in train_items] \
            + [it.answers[0] for it in train_items if it.answers]
        subset = {"frac": o.train_frac, "of_paragraphs": len({(it.title, it.paragraph) for it in train_items})}
        train_items = keep_paragraphs(train_items, o.train_frac)  # after `texts`: the whole file's tokenizer
        subset["paragraphs"] = len({(it.title, it.paragraph) for it in train_items})
        extra: dict[str, Any] = {}
        if o.extra_train:
            protocol, added, extra = self._extra(ctx, protocol, eval_items + dev_items)
            train_items = train_items + added
            files["extra_train"] = extra.pop("dir")
        settings = TokenizerSettings(vocab_size=o.vocab_size or ctx.vocab_size, normalization=o.normalization)
        tok = train_or_load(texts, settings, ctx.cache_dir / "tokenizers")
        enc = _Encoder(tok, ctx.max_len, o.order)

        train = enc.training_set(train_items)
        dev = enc.training_set(dev_items)
        n_eval_total = len(eval_items)
        if o.eval_limit and o.eval_limit < len(eval_items):
            pick = np.sort(np.random.default_rng(0).choice(len(eval_items), o.eval_limit, replace=False))
            eval_items = [eval_items[i] for i in pick]
        prompts, cut = [], 0
        for it in eval_items:
            p, kept_chars = enc.prompt(it, reserve=o.max_answer_tokens + 1)
            answer_kept = any(0 <= s and s + len(a) <= kept_chars for a, s in zip(it.answers, it.starts))
            cut += int(kept_chars < len(it.paragraph) and not answer_kept)
            prompts.append(p)
        eval_seqs = [p + (tok.encode(it.answers[0])[: o.max_answer_tokens] if it.answers else []) + [tok.special.eos]
                     for p, it in zip(prompts, eval_items)]
        eval_set = SeqSet.from_lists(eval_seqs, [[i >= len(p) for i in range(len(s))] for p, s in zip(prompts, eval_seqs)],
                                     tok.special.pad)
        info = {
            "files": files, "tokenizer": dataclasses.asdict(settings), "vocab_size": tok.vocab_size,
            "max_len": ctx.max_len, "train_questions": len(train[0]), "dev_questions": len(dev[0]),
            "train_tokens": train[0].n_tokens, "train_truncated": train[1], "train_dropped": train[2],
            "eval_questions": len(eval_items), "eval_questions_total": n_eval_total,
            "eval_truncated": enc.eval_truncated, "eval_answer_cut": cut,
            **({"extra_train": extra} if extra else {}),
            **({"train_subset": subset} if o.train_frac < 1 else {}),
        }
        ctx.log(f"[jsquad] {protocol}: {info['train_questions']} train / {info['dev_questions']} dev / "
                f"{len(eval_items)} eval questions, vocab {tok.vocab_size}, {info['train_tokens']:,} train tokens")
        return TaskData(protocol, tok.special, tok.vocab_size, train[0], dev[0], eval_set,
                        items=[(p, it) for p, it in zip(prompts, eval_items)], info=info, decode=tok.decode,
                        tokenizer=tok, passages=list(dict.fromkeys(it.paragraph for it in train_items)),
                        dev_items=self._dev_prompts(enc, dev_items), eval_ids=[it.qid for it in eval_items])

    def _dev_prompts(self, enc: _Encoder, items: list[QAItem]) -> list[tuple[list[int], QAItem]]:
        """The dev slice's questions as evaluation prompts (`TaskData.dev_items`); built after `info` took the
        evaluation's truncation count (`enc` counts these too). A question with no answer, or whose title and
        question leave no room for a context, is left out rather than stopping the grid."""
        out = []
        for it in items:
            if it.answers:
                try:
                    out.append((enc.prompt(it, reserve=self.opts.max_answer_tokens + 1)[0], it))
                except DataError:
                    pass
        return out

    def _extra(self, ctx: PrepareContext, protocol: str, held: list[QAItem]) -> tuple[str, list[QAItem], dict[str, Any]]:
        """JaQuAD's training items minus the articles overlapping the held-out (evaluation + dev) text."""
        from tasks import jaquad

        o = self.opts
        if o.extra_train != "jaquad":
            raise ValueError(f"jsquad: extra_train must be '' or 'jaquad'; got {o.extra_train!r}")
        if o.jaquad_dir:
            root = Path(o.jaquad_dir)
        elif ctx.data_dir is not None:
            root = Path(ctx.data_dir).resolve().parent / "jaquad-v0.1.0"
        else:
            raise DataError("extra_train=jaquad reads local files: pass --task-opt jaquad_dir=DIR "
                            "(e.g. ../shared/data/jaquad-v0.1.0)")
        articles = jaquad.load_articles(root)
        kept, info = jaquad.filter_overlap(articles, {it.title for it in held}, {it.paragraph for it in held})
        items = parse_articles(kept, str(root))
        info = {"dataset": "jaquad-v0.1.0 train+dev", "dir": str(root), "articles": len(articles),
                "articles_kept": len(kept), "questions": len(items), **info}
        ctx.log(f"[jsquad] +jaquad: {len(items):,} questions from {len(kept)} articles; dropped "
                f"{info['articles_dropped']} overlapping the held-out text ({info['dropped_by_title']} by title, "
                f"{info['dropped_by_paragraph']} by paragraph)")
        return f"{protocol}+jaquad", items, info

    # -- references (floors and ceiling), written as results rows beside the models
    def references(self, data: TaskData, ctx: PrepareContext) -> list[Reference]:
        """Non-neural baselines and the tokenizer ceiling (tasks/jsquad_baselines.py), on the models'
        evaluation items, and on the whole evaluation split when `eval_limit` sampled it."""

        items = [it for _, it in data.items]
        sampled = data.info.get("eval_questions_total", len(items)) > len(items)
        full_cache: list[list[QAItem]] = []

        def full_split() -> list[QAItem]:
            if not full_cache:
                full_cache.append(self._splits(ctx)[2])
            return full_cache[0]

        # what fixes the evaluation items (paths are left out: the same data may sit elsewhere)
        where = {"task": "jsquad", "protocol": data.protocol, "eval_file": Path(data.info["files"]["eval"]).name,
                 "eval_limit": self.opts.eval_limit}
        refs = [Reference(name, "baseline", jb.describe(name), {**where, "reference": name},
                          score=lambda n=name: jb.score_baseline(n, items),
                          score_full=(lambda n=name: jb.score_baseline(n, full_split())) if sampled else None)
                for name in jb.BASELINES]
        tok, cap = data.tokenizer, self.opts.max_answer_tokens
        if tok is not None:
            setting = f"{tok.settings.normalization}, vocab {tok.vocab_size}, ≤{cap} answer tokens"
            refs.append(Reference(
                "tokenizer_ceiling", "ceiling",
                "every gold answer encoded with the run's tokenizer, cut to the answer-token limit, decoded back",
                {**where, "reference": "tokenizer_ceiling", "tokenizer": data.info["tokenizer"],
                 "vocab_size": tok.vocab_size, "dev_frac": self.opts.dev_frac, "max_answer_tokens": cap},
                score=lambda: jb.tokenizer_ceiling(items, tok, cap),
                score_full=(lambda: jb.tokenizer_ceiling(full_split(), tok, cap)) if sampled else None,
                setting=setting))
        return refs

    # -- scoring
    def evaluate(self, model, objective, data: TaskData, device: torch.device, batch_size: int,
                 progress=None) -> dict[str, Any]:

        prompts = [p for p, _ in data.items]
        golds = [it.answers for _, it in data.items]
        span = self.opts.answer_constraint == "span"
        cons = self.span_constraints(prompts, data) if span else None
        model.eval()
        with torch.no_grad(), autocast(device):
            preds = [data.decode(ids) for ids in self.answer_ids(model, objective, prompts, batch_size, cons, progress)]
            latency = latency_ms(lambda i: objective.generate(model, [prompts[i]], self.opts.max_answer_tokens, 1,
                                                              **({"constraints": [cons[i]]} if cons else {})),
                                 min(self.opts.latency_n, len(prompts)), device)
        scores = corpus_scores(preds, golds)
        per = [score(pr, it.answers) for (_, it), pr in zip(data.items, preds)]  # (em, f1) per question
        # a few predictions by question id: no dataset text (questions, gold answers) lands in results
        samples = [{"qid": it.qid, "pred": pr, "em": em, "f1": f1}
                   for ((_, it), pr, (em, f1)) in list(zip(data.items, preds, per))[:5]]
        # every question's EM/F1 by id (ids and numbers only), for paired comparisons across cells
        per_question = {"id": [it.qid for _, it in data.items], "em": [int(em) for em, _ in per],
                        "f1": [round(float(f1), 4) for _, f1 in per]}
        return {**scores, "gen_latency_ms": latency, "decode_path": objective.decode_path(model), "eval_n": len(preds),
                "answer_constraint": f"span: {objective.constraint_path}" if span else "none: free generation",
                "samples": samples, "per_question": per_question}

    def answer_ids(self, model, objective, prompts: list[list[int]], batch_size: int,
                   cons: list[SpanConstraint] | None = None, progress=None) -> list[list[int]]:
        """Each prompt's answer ids (under `cons`, one constraint per prompt, if given), in prompt order.
        By length, one batch at a time: `generate` forms exactly the batches it would form over all
        prompts (its sort is stable), and the progress line can count answers. The caller sets no_grad
        and autocast."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[list[int]] = [[] for _ in prompts]
        if progress:
            progress(0, len(order))
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            kw = {"constraints": [cons[i] for i in idx]} if cons else {}
            for i, ids in zip(idx, objective.generate(model, [prompts[i] for i in idx], self.opts.max_answer_tokens,
                                                      batch_size, **kw)):
                out[i] = ids
            if progress:
                progress(s + len(idx), len(order))
        return out

    def span_constraints(self, prompts: list[list[int]], data: TaskData) -> list[SpanConstraint]:
        """One `SpanConstraint` per prompt over the title and the paragraph *as the prompt holds them* (an
        evaluation prompt may keep only the paragraph's beginning), cut back out of the prompt by its
        separators: the ids between them decode to exactly that text."""
        tok = data.tokenizer
        if tok is None:
            raise DataError("jsquad: answer_constraint=span needs the task's tokenizer (TaskData.tokenizer)")
        trie, sep = PieceTrie(tok.piece_bytes()), data.special.sep
        out = []
        for p in prompts:
            parts, cur = [], []
            for i in p[1:]:  # after BOS: the prompt's sections, each ended by SEP
                if i == sep:
                    parts.append(cur)
                    cur = []
                else:
                    cur.append(i)
            sec = dict(zip(SECTIONS[self.opts.order], parts))
            # a cut through a character's byte tokens decodes as U+FFFD: not a character of the paragraph
            out.append(SpanConstraint([tok.decode(sec["title"]), tok.decode(sec["paragraph"]).rstrip("\ufffd")],
                                      trie, data.special.eos))
        return out


class _Encoder:
    """Builds token sequences for one tokenizer and length limit, caching paragraph encodings
    (JSQuAD asks ~4 questions per paragraph)."""

    def __init__(self, tok: JaTokenizer, max_len: int, order: str):
        self.tok, self.max_len, self.order = tok, max_len, order
        self._cache: dict[str, list[int]] = {}
        self.eval_truncated = 0

    def enc(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.tok.encode(text)
        return self._cache[text]

    def _assemble(self, title: list[int], par: list[int], q: list[int]) -> list[int]:
        s = self.tok.special
        sec = {"title": title, "paragraph": par, "question": q}
        return [s.bos] + [i for name in SECTIONS[self.order] for i in (*sec[name], s.sep)]

    def prompt(self, it: QAItem, reserve: int) -> tuple[list[int], int]:
        """Evaluation prompt, keeping the paragraph's beginning; also the number of characters kept."""
        title, q, par = self.enc(it.title), self.enc(it.question), self.enc(it.paragraph)
        room = self.max_len - reserve - 4 - len(title) - len(q)
        if room <= 0:
            raise DataError(f"question {it.qid}: max_len {self.max_len} leaves no room for the context")
        if len(par) <= room:
            return self._assemble(title, par, q), len(it.paragraph)
        self.eval_truncated += 1
        kept = par[:room]
        # a cut through a character's byte tokens decodes its bytes kept as U+FFFD: not a character kept
        return self._assemble(title, kept, q), len(self.tok.decode(kept).rstrip("\ufffd"))

    def training_set(self, items: list[QAItem]) -> tuple[SeqSet, int, int]:
        seqs, tgts, truncated, dropped = [], [], 0, 0
        eos = self.tok.special.eos
        for it in items:
            if not it.answers:
                dropped += 1
                continue
            ans = self.enc(it.answers[0]) + [eos]
            title, q = self.enc(it.title), self.enc(it.question)
            room = self.max_len - 4 - len(title) - len(q) - len(ans)
            par = self.enc(it.paragraph)
            if len(par) > room:
                par = self._window(it, room)
                if par is None:
                    dropped += 1
                    continue
                truncated += 1
            p = self._assemble(title, par, q)
            seqs.append(p + ans)
            tgts.append([False] * len(p) + [True] * len(ans))
        return SeqSet.from_lists(seqs, tgts, self.tok.special.pad), truncated, dropped

    def _window(self, it: QAItem, room: int) -> list[int] | None:
        """Paragraph characters around the first gold answer that fit in `room` tokens, or None."""
        start, ans = it.starts[0], it.answers[0]
        if start < 0 or it.paragraph[start : start + len(ans)] != ans:
            start = it.paragraph.find(ans)
        if start < 0 or room <= 0:
            return None
        n = len(it.paragraph)
        width = int(n * room / max(len(self.enc(it.paragraph)), 1))
        while width >= len(ans):
            lo = max(0, min(start - (width - len(ans)) // 2, n - width))
            ids = self.tok.encode(it.paragraph[lo : lo + width])
            if len(ids) <= room:
                return ids
            width = int(width * 0.9)
        return None

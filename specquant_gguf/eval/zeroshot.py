"""Zero-shot multiple-choice accuracy with lm-evaluation-harness conventions (`specquant zeroshot`).

Every choice is scored by the log-likelihood of its continuation given the context: the sum of the
log-probabilities of the continuation's tokens. Tokenization follows lm-eval's `_encode_pair`:
trailing spaces of the context move to the continuation, the whole string `context+continuation`
is encoded, the context alone is encoded, and the continuation's tokens are the whole encoding past
the context's token count (so a merge across the boundary is resolved the way lm-eval does; the
model then reads `context_tokens + continuation_tokens`). No BOS is added (lm-eval's default for
causal models) except for an empty context, which becomes the single prefix token.

`acc` is the argmax of the log-likelihoods; `acc_norm` divides each by the choice's length in UTF-8
bytes first (lm-eval divides by `len(choice)`, the same for ASCII text).

KV reuse: all requests of one item are scored from one model state. The longest token prefix the
requests share (the context, and often the first words of the continuations) is evaluated once;
then, for each request, the KV cache is rewound to that prefix (`set_n_past`) and only the
request's own remaining tokens are evaluated. Logits are asked for only where a continuation token
is predicted. This module imports only numpy (and tqdm when present) at module level, so that
bench/ can run the same scoring code against llama.cpp in a separate environment.
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import SpecQuantError, UsageError
from ..progress import track
from .scoring import ScoringModel, prefix_token

Tokenize = Callable[[str], list[int]]

# ---------------------------------------------------------------------------------------------
# items and requests


@dataclass
class Item:
    """One evaluation item: one (context, continuation) request per choice, and the gold index."""
    requests: list[tuple[str, str]]
    gold: int
    norm_lengths: list[int]  # acc_norm divisors (UTF-8 bytes of each choice)


@dataclass
class Scored:
    loglik: float      # sum of log p(continuation token) in nats
    greedy: bool       # every continuation token is the argmax (lambada's accuracy)
    n_tokens: int      # continuation tokens


TokenRequest = tuple[list[int], list[int]]  # (context ids, continuation ids)


def encode_pair(tokenize: Tokenize, context: str, continuation: str, prefix_token: int | None) -> TokenRequest:
    """lm-eval's `_encode_pair`: split the encoding of context+continuation at the context's length."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if not context:
        if prefix_token is None:
            raise SpecQuantError("an empty context needs a BOS/EOS prefix token, and the model has none")
        return [prefix_token], tokenize(continuation)
    whole = tokenize(context + continuation)
    ctx = tokenize(context)
    cont = whole[len(ctx):]
    if not cont:  # a merge swallowed the whole continuation: score it on its own instead
        cont = tokenize(continuation)
    return ctx, cont


def build_requests(items: Iterable[Item], tokenize: Tokenize, prefix_token: int | None) -> list[list[TokenRequest]]:
    """Token ids of every request of every item (contexts shared by choices are encoded once)."""
    cache: dict[str, list[int]] = {}

    def cached(text: str) -> list[int]:
        if text not in cache:
            if len(cache) > 64:
                cache.clear()
            cache[text] = tokenize(text)
        return cache[text]

    out: list[list[TokenRequest]] = []
    for item in items:
        out.append([encode_pair(cached, ctx, cont, prefix_token) for ctx, cont in item.requests])
    return out


# ---------------------------------------------------------------------------------------------
# scoring


def _log_softmax_at(rows: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log p(target) for each row and whether the target is the row's argmax. The exponentials are
    float32 (each term within 1e-7 relative, 3x faster than float64 over a 49k vocabulary), their
    sum and the log float64: the result is within ~1e-7 nats of an all-float64 log-softmax."""
    rows = np.asarray(rows, dtype=np.float32)
    mx = rows.max(axis=1)
    lse = mx.astype(np.float64) + np.log(np.exp(rows - mx[:, None]).sum(axis=1, dtype=np.float64))
    picked = rows[np.arange(len(targets)), targets].astype(np.float64)
    return picked - lse, rows.argmax(axis=1) == targets


def _advance(model: ScoringModel, ids: Sequence[int]) -> None:
    """Runs tokens into the KV cache; without logits when the model can (runtime.Model.advance)."""
    adv = getattr(model, "advance", None)
    if adv is not None:
        adv(ids)
    else:
        model.eval_last(ids)


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs[1:]):
            return i
    return n


@dataclass
class ScoreStats:
    tokens_evaluated: int = 0   # tokens run through the model (KV reuse makes this small)
    tokens_requested: int = 0   # what scoring every request from scratch would have run


def score_requests(model: ScoringModel, requests: Sequence[TokenRequest], stats: ScoreStats | None = None) -> list[Scored]:
    """Scores the requests of one item, evaluating their shared token prefix once (see module doc)."""
    n_ctx = int(model.n_ctx)
    seqs: list[list[int]] = []
    starts: list[int] = []  # index in seq of the first continuation token
    for ctx, cont in requests:
        if not cont:
            raise SpecQuantError("a request has an empty continuation")
        seq = list(ctx) + list(cont)
        cut = max(0, len(seq) - (n_ctx + 1))  # lm-eval: keep the last n_ctx + 1 tokens
        seqs.append(seq[cut:])
        starts.append(max(1, len(ctx) - cut))
    # the shared prefix, leaving every request at least its last input token to evaluate
    p = min(_common_prefix(seqs), min(len(s) - 1 for s in seqs))
    first_needed = min(starts) - 1  # first position whose logits anyone needs
    model.reset()
    pre_rows: np.ndarray | None = None  # logits of positions [pre_from, p)
    pre_from = p
    if p > 0:
        pre_from = min(first_needed, p - 1)
        if pre_from == p - 1:  # the usual case: only the prefix's last position is needed
            pre_rows = np.asarray(model.eval_last(seqs[0][:p]), dtype=np.float32)[None, :]
        else:
            if pre_from > 0:
                _advance(model, seqs[0][:pre_from])  # nobody needs these logits
            pre_rows = np.asarray(model.eval(seqs[0][pre_from:p]), dtype=np.float32)
    evaluated = p
    results: list[Scored] = []
    for seq, start in zip(seqs, starts):
        model.set_n_past(p)
        lo = start - 1  # positions lo .. len(seq)-2 predict the continuation tokens
        parts: list[np.ndarray] = []
        if lo < p:
            assert pre_rows is not None
            parts.append(pre_rows[lo - pre_from:])
        pos = p
        if lo > pos:  # the request's own context tokens: no logits needed
            _advance(model, seq[pos:lo])
            evaluated += lo - pos
            pos = lo
        tail = seq[pos:len(seq) - 1]
        if tail:
            parts.append(np.asarray(model.eval(tail), dtype=np.float32))
            evaluated += len(tail)
        rows = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        targets = np.asarray(seq[start:], dtype=np.int64)
        if rows.shape[0] != len(targets):
            raise SpecQuantError(f"internal: {rows.shape[0]} logit rows for {len(targets)} targets")
        lp, hit = _log_softmax_at(rows, targets)
        results.append(Scored(float(lp.sum()), bool(hit.all()), len(targets)))
    if stats is not None:
        stats.tokens_evaluated += evaluated
        stats.tokens_requested += sum(len(s) - 1 for s in seqs)
    return results


def score_items(model: ScoringModel, item_requests: Sequence[Sequence[TokenRequest]], *,
                progress: str | None = None, stats: ScoreStats | None = None) -> list[list[Scored]]:
    """score_requests over items, with a progress bar on stderr when `progress` names it."""
    return [score_requests(model, reqs, stats) for reqs in track(item_requests, len(item_requests), progress, "item")]




# ---------------------------------------------------------------------------------------------
# metrics


def _stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1.0 - p) / (n - 1)) if n > 1 else 0.0


def multiple_choice_metrics(items: Sequence[Item], scores: Sequence[Sequence[Scored]], use_norm: bool) -> dict:
    """acc (and acc_norm) with lm-eval's sample standard errors."""
    n = len(items)
    acc = sum(int(np.argmax([s.loglik for s in sc]) == it.gold) for it, sc in zip(items, scores))
    out: dict = {"n": n, "acc": acc / n if n else 0.0}
    out["acc_stderr"] = _stderr(out["acc"], n)
    if use_norm:
        acc_norm = sum(int(np.argmax([s.loglik / max(1, L) for s, L in zip(sc, it.norm_lengths)]) == it.gold)
                       for it, sc in zip(items, scores))
        out["acc_norm"] = acc_norm / n if n else 0.0
        out["acc_norm_stderr"] = _stderr(out["acc_norm"], n)
    return out


def lambada_metrics(items: Sequence[Item], scores: Sequence[Sequence[Scored]]) -> dict:
    """Greedy-match accuracy of the last word and lm-eval's perplexity exp(-mean loglik)."""
    n = len(items)
    acc = sum(int(sc[0].greedy) for sc in scores) / n if n else 0.0
    mean_ll = sum(sc[0].loglik for sc in scores) / n if n else 0.0
    return {"n": n, "acc": acc, "acc_stderr": _stderr(acc, n), "perplexity": math.exp(-mean_ll)}


# ---------------------------------------------------------------------------------------------
# task loaders (lm-eval prompt formats)


def _read_jsonl(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SpecQuantError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise SpecQuantError(f"{path}:{lineno}: expected a JSON object")
            yield obj


def _read_labels(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _field(obj: dict, key: str, where: str):
    if key not in obj:
        raise SpecQuantError(f"{where}: missing field '{key}'")
    return obj[key]


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def _mc_item(context: str, choices: Sequence[str], gold: int, where: str) -> Item:
    """A multiple-choice item whose choices continue one context after a space (target_delimiter)."""
    if not 0 <= gold < len(choices):
        raise SpecQuantError(f"{where}: gold index {gold} out of range for {len(choices)} choices")
    return Item([(context, " " + c) for c in choices], gold, [_nbytes(c) for c in choices])


def _labels_beside(path: Path, n: int, names: Sequence[str]) -> list[str] | None:
    for name in names:
        lab = path.parent / name
        if lab.is_file():
            labels = _read_labels(lab)
            if len(labels) != n:
                raise SpecQuantError(f"{lab}: {len(labels)} labels for {n} items in {path.name}")
            return labels
    return None


def load_piqa(path: Path) -> list[Item]:
    docs = list(_read_jsonl(path))
    labels = _labels_beside(path, len(docs), [path.name.replace(".jsonl", "-labels.lst")])
    items = []
    for i, d in enumerate(docs):
        where = f"{path}:{i + 1}"
        gold = labels[i] if labels is not None else _field(d, "label", where + " (and no labels file)")
        ctx = f"Question: {_field(d, 'goal', where)}\nAnswer:"
        items.append(_mc_item(ctx, [_field(d, "sol1", where), _field(d, "sol2", where)], int(gold), where))
    return items


def _choice_lists(d: dict, where: str) -> tuple[str, list[str], list[str]]:
    """(stem, choice texts, choice labels) from the ARC/OpenBookQA original or Hugging Face schema."""
    q = d.get("question")
    if isinstance(q, dict):  # original: question.stem, question.choices [{text, label}]
        stem = _field(q, "stem", where)
        choices = _field(q, "choices", where)
        return stem, [c["text"] for c in choices], [str(c["label"]) for c in choices]
    stem = d["question_stem"] if "question_stem" in d else _field(d, "question", where)
    ch = _field(d, "choices", where)
    if isinstance(ch, dict):
        return stem, list(ch["text"]), [str(x) for x in ch["label"]]
    return stem, [c["text"] for c in ch], [str(c["label"]) for c in ch]


def _gold_from_key(labels: list[str], key: str, where: str) -> int:
    key = str(key).strip()
    if key not in labels:
        raise SpecQuantError(f"{where}: answerKey {key!r} is not among the labels {labels}")
    return labels.index(key)  # "1" is index 0 when labels are 1-4: never int(answerKey)


def load_arc(path: Path) -> list[Item]:
    items = []
    for i, d in enumerate(_read_jsonl(path)):
        where = f"{path}:{i + 1}"
        stem, texts, labels = _choice_lists(d, where)
        gold = _gold_from_key(labels, _field(d, "answerKey", where), where)
        items.append(_mc_item(f"Question: {stem}\nAnswer:", texts, gold, where))
    return items


def load_openbookqa(path: Path) -> list[Item]:
    items = []
    for i, d in enumerate(_read_jsonl(path)):
        where = f"{path}:{i + 1}"
        stem, texts, labels = _choice_lists(d, where)
        gold = _gold_from_key(labels, _field(d, "answerKey", where), where)
        items.append(_mc_item(stem, texts, gold, where))
    return items


def _hellaswag_preprocess(text: str) -> str:
    # lm-eval's hellaswag preprocess
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def load_hellaswag(path: Path) -> list[Item]:
    if path.suffix == ".jsonl":  # the original release: activity_label, ctx_a, ctx_b, endings, label
        items = []
        for i, d in enumerate(_read_jsonl(path)):
            where = f"{path}:{i + 1}"
            ctx = _field(d, "ctx_a", where) + " " + _field(d, "ctx_b", where).capitalize()
            query = _hellaswag_preprocess(_field(d, "activity_label", where) + ": " + ctx)
            endings = [_hellaswag_preprocess(e) for e in _field(d, "endings", where)]
            items.append(_mc_item(query, endings, int(_field(d, "label", where)), where))
        return items
    # llama.cpp's 6-line text format: context, gold index, four endings (already preprocessed)
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise SpecQuantError(f"{path}: {len(lines)} lines is not a multiple of 6 (context, label, 4 endings)")
    items = []
    for k in range(0, len(lines), 6):
        where = f"{path}:{k + 1}"
        try:
            gold = int(lines[k + 1])
        except ValueError:
            raise SpecQuantError(f"{path}:{k + 2}: expected the gold index, got {lines[k + 1][:40]!r}") from None
        items.append(_mc_item(lines[k], lines[k + 2:k + 6], gold, where))
    return items


def load_winogrande(path: Path) -> list[Item]:
    """Partial scoring: the contexts differ (sentence up to '_' with each option), the continuation
    (the rest of the sentence) is shared and is what is scored."""
    items = []
    for i, d in enumerate(_read_jsonl(path)):
        where = f"{path}:{i + 1}"
        sentence = _field(d, "sentence", where)
        idx = sentence.find("_")
        if idx < 0:
            raise SpecQuantError(f"{where}: the sentence has no '_' blank")
        rest = " " + sentence[idx + 1:].strip()
        options = [_field(d, "option1", where), _field(d, "option2", where)]
        answer = str(_field(d, "answer", where)).strip()
        if answer not in ("1", "2"):
            raise SpecQuantError(f"{where}: answer must be 1 or 2, got {answer!r}")
        reqs = [(sentence[:idx] + opt, rest) for opt in options]
        items.append(Item(reqs, int(answer) - 1, [_nbytes(rest)] * 2))
    return items


def load_boolq(path: Path) -> list[Item]:
    items = []
    for i, d in enumerate(_read_jsonl(path)):
        where = f"{path}:{i + 1}"
        label = d["label"] if "label" in d else _field(d, "answer", where)
        gold = int(label) if not isinstance(label, str) else {"true": 1, "false": 0}.get(label.lower(), -1)
        ctx = f"{_field(d, 'passage', where)}\nQuestion: {_field(d, 'question', where)}?\nAnswer:"
        items.append(_mc_item(ctx, ["no", "yes"], gold, where))
    return items


def load_social_iqa(path: Path) -> list[Item]:
    docs = list(_read_jsonl(path))
    labels = _labels_beside(path, len(docs), [path.name.replace(".jsonl", "-labels.lst")])
    items = []
    for i, d in enumerate(docs):
        where = f"{path}:{i + 1}"
        label = labels[i] if labels is not None else _field(d, "label", where + " (and no labels file)")
        ctx = f"Q: {_field(d, 'context', where)} {_field(d, 'question', where)}\nA:"
        choices = [_field(d, k, where) for k in ("answerA", "answerB", "answerC")]
        items.append(_mc_item(ctx, choices, int(label) - 1, where))
    return items


def load_lambada(path: Path) -> list[Item]:
    items = []
    for i, d in enumerate(_read_jsonl(path)):
        where = f"{path}:{i + 1}"
        text = _field(d, "text", where)
        if " " not in text.strip():
            raise SpecQuantError(f"{where}: the text has no last word to predict")
        ctx, word = text.rsplit(" ", 1)
        items.append(Item([(ctx, " " + word)], 0, [_nbytes(word)]))
    return items


@dataclass(frozen=True)
class Task:
    loader: Callable[[Path], list[Item]]
    files: tuple[str, ...]          # candidate file names inside the task's folder, in order
    kind: str = "mc_norm"           # mc_norm: acc + acc_norm; mc: acc only; lambada
    folders: tuple[str, ...] = ()   # folder names (default: the task name)


TASKS: dict[str, Task] = {
    "piqa": Task(load_piqa, ("valid.jsonl", "dev.jsonl")),
    "arc_easy": Task(load_arc, ("ARC-Easy-Test.jsonl", "test.jsonl")),
    "arc_challenge": Task(load_arc, ("ARC-Challenge-Test.jsonl", "test.jsonl")),
    "hellaswag": Task(load_hellaswag, ("hellaswag_val_full.txt", "hellaswag_val.jsonl")),
    "winogrande": Task(load_winogrande, ("dev.jsonl", "winogrande_dev.jsonl"), "mc"),
    "boolq": Task(load_boolq, ("val.jsonl", "dev.jsonl"), "mc"),
    "openbookqa": Task(load_openbookqa, ("test.jsonl",)),
    "social_iqa": Task(load_social_iqa, ("dev.jsonl",), "mc", ("social_iqa", "siqa")),
    "lambada_openai": Task(load_lambada, ("lambada_test.jsonl", "test.jsonl"), "lambada", ("lambada_openai", "lambada")),
}


def default_data_dir() -> Path | None:
    """../shared/data from the working directory or from the repository root, when it exists."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        cand = (base / ".." / "shared" / "data").resolve()
        if cand.is_dir():
            return cand
    return None


def task_file(name: str, data_dir: Path) -> Path:
    """The data file of a task under DIR/zeroshot/<task>/ or DIR/<task>/ (clear error if absent)."""
    if name not in TASKS:
        raise UsageError(f"unknown task '{name}' (known: {', '.join(TASKS)})")
    task = TASKS[name]
    tried = []
    for root in (data_dir / "zeroshot", data_dir):
        for folder in task.folders or (name,):
            for fname in task.files:
                cand = root / folder / fname
                if cand.is_file():
                    return cand
                tried.append(str(cand))
    raise SpecQuantError(f"no data file for task '{name}': tried {', '.join(tried[:4])}"
                         + (f" (+{len(tried) - 4} more)" if len(tried) > 4 else ""))


def load_task(name: str, data_dir: Path, limit: int | None = None) -> list[Item]:
    path = task_file(name, data_dir)  # also rejects unknown task names
    items = TASKS[name].loader(path)
    if not items:
        raise SpecQuantError(f"task '{name}': the data file has no items")
    return items[:limit] if limit is not None else items


def task_metrics(name: str, items: Sequence[Item], scores: Sequence[Sequence[Scored]]) -> dict:
    kind = TASKS[name].kind
    if kind == "lambada":
        return lambada_metrics(items, scores)
    return multiple_choice_metrics(items, scores, use_norm=(kind == "mc_norm"))


def average(results: dict[str, dict]) -> dict:
    """Unweighted mean over tasks of acc, and of acc_norm where a task has it (acc otherwise)."""
    accs = [r["acc"] for r in results.values()]
    norms = [r.get("acc_norm", r["acc"]) for r in results.values()]
    if not accs:
        return {}
    return {"acc": sum(accs) / len(accs), "acc_norm_or_acc": sum(norms) / len(norms), "tasks": len(accs)}


def evaluate_tasks(model: ScoringModel, tasks: Sequence[str], data_dir: Path, limit: int | None = None,
                   progress: bool = True) -> dict[str, dict]:
    """Loads, tokenizes, scores and summarises each task; returns {task: metrics}."""
    loaded = {name: load_task(name, data_dir, limit) for name in tasks}  # fail early on bad data
    results: dict[str, dict] = {}
    for name, items in loaded.items():
        t0 = time.perf_counter()
        reqs = build_requests(items, model.tokenize, prefix_token(model))
        stats = ScoreStats()
        scores = score_items(model, reqs, progress=name if progress else None, stats=stats)
        res = task_metrics(name, items, scores)
        res.update(seconds=round(time.perf_counter() - t0, 2), tokens_evaluated=stats.tokens_evaluated,
                   tokens_without_reuse=stats.tokens_requested)
        results[name] = res
    return results


def parse_tasks(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UsageError("--tasks is empty")
    for n in names:
        if n not in TASKS:
            raise UsageError(f"unknown task '{n}' (known: {', '.join(TASKS)})")
    return list(dict.fromkeys(names))


def format_table(results: dict[str, dict]) -> str:
    lines = [f"{'task':<16}{'n':>7}{'acc':>9}{'±':>8}{'acc_norm':>10}{'±':>8}{'time':>9}"]
    for name, r in results.items():
        extra = f"{r['acc_norm']:>10.4f}{r['acc_norm_stderr']:>8.4f}" if "acc_norm" in r else f"{'-':>10}{'':>8}"
        if "perplexity" in r:
            extra = f"{'ppl ' + format(r['perplexity'], '.3f'):>18}"
        lines.append(f"{name:<16}{r['n']:>7}{r['acc']:>9.4f}{r['acc_stderr']:>8.4f}{extra}{r['seconds']:>8.1f}s")
    avg = average(results)
    if len(results) > 1 and avg:
        lines.append(f"{'average':<16}{'':>7}{avg['acc']:>9.4f}{'':>8}{avg['acc_norm_or_acc']:>10.4f}"
                     "   (acc_norm where the task has it)")
    return "\n".join(lines)

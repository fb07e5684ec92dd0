"""Zero-shot evaluation: lm-eval tokenization, KV-reuse scoring, task loaders, metrics, CLI.

The model here is a real (tiny) scoring model, not a stub: a byte-level tokenizer that glues a
space to the following letter (so the context/continuation boundary matters like it does with
GPT-2-style BPE) and an interpolated bigram/trigram table learned from text. Its logits at a
position depend on the previous token in the KV cache, so a wrong rewind changes the scores.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from specquant_gguf import cli
from specquant_gguf.cli import zeroshot as zs_cli
from specquant_gguf.eval import zeroshot as zs
from specquant_gguf.errors import SpecQuantError, UsageError

FIXTURES = Path(__file__).parent / "fixtures" / "zeroshot"

# --------------------------------------------------------------------------------------------
# the tiny model

N_VOCAB = 1 + 256 + 26  # 0 = BOS; 1..256 = bytes; 257..282 = " a" .. " z"
BOS = 0


def fake_tokenize(text: str) -> list[int]:
    data = text.encode("utf-8")
    out, i = [], 0
    while i < len(data):
        if data[i] == 0x20 and i + 1 < len(data) and 0x61 <= data[i + 1] <= 0x7A:
            out.append(257 + data[i + 1] - 0x61)
            i += 2
        else:
            out.append(1 + data[i])
            i += 1
    return out


class NgramModel:
    """p(next | prev, cur) = 0.6 * bigram(cur) + 0.3 * trigram(prev, cur) + 0.1 * uniform.
    A ScoringModel (eval.scoring) with fake_tokenize as its tokenizer."""

    name = "ngram"
    add_bos = False
    bos_id = BOS
    eos_id = None

    def __init__(self, corpus: list[str], n_ctx: int = 256):
        self.n_ctx = n_ctx
        self.n_vocab = N_VOCAB
        big = np.ones((N_VOCAB, N_VOCAB))
        self.tri: dict[tuple[int, int], Counter] = {}
        for text in corpus:
            ids = [BOS] + fake_tokenize(text)
            for a, b in zip(ids, ids[1:]):
                big[a, b] += 5
            for a, b, c in zip(ids, ids[1:], ids[2:]):
                self.tri.setdefault((a, b), Counter())[c] += 1
        self.big = big / big.sum(axis=1, keepdims=True)
        self.tokens: list[int] = []   # the "KV cache"
        self.evaluated = 0

    def next_logprobs(self, prev: int | None, cur: int) -> np.ndarray:
        p = 0.6 * self.big[cur] + 0.1 / N_VOCAB
        tri = self.tri.get((prev, cur)) if prev is not None else None
        if tri:
            t = np.zeros(N_VOCAB)
            for k, v in tri.items():
                t[k] = v
            p = p + 0.3 * t / t.sum()
        else:
            p = p + 0.3 * self.big[cur]
        return np.log(p).astype(np.float32)

    # the runtime.Model interface
    def eval(self, ids):
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("empty eval")
        if len(self.tokens) + len(ids) > self.n_ctx:
            raise SpecQuantError("context full")
        rows = []
        for t in ids:
            prev = self.tokens[-1] if self.tokens else None
            self.tokens.append(t)
            rows.append(self.next_logprobs(prev, t))
        self.evaluated += len(ids)
        return np.stack(rows)

    def eval_last(self, ids):
        return self.eval(ids)[-1]

    def set_n_past(self, n: int) -> None:
        if not 0 <= n <= len(self.tokens):
            raise SpecQuantError("bad n_past")
        del self.tokens[n:]

    def reset(self) -> None:
        self.tokens.clear()

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def tokenize(self, text: str, add_bos=None):
        return ([BOS] if add_bos else []) + fake_tokenize(text)

    token_bos = BOS


def brute_force(model: NgramModel, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    """The same quantity straight from the tables: no cache, no rewind."""
    seq = ctx + cont
    ll, greedy = 0.0, True
    for i in range(len(ctx), len(seq)):
        prev = seq[i - 2] if i >= 2 else None
        lp = model.next_logprobs(prev, seq[i - 1]).astype(np.float64)
        lp = lp - np.log(np.exp(lp).sum())
        ll += lp[seq[i]]
        greedy &= int(np.argmax(lp)) == seq[i]
    return ll, greedy


CORPUS = ["the cat sat on the mat", "Question: How do I keep bread fresh?\nAnswer: Store the bread in a sealed bag",
          "she opened the door and walked into the room", "one two three four five"]

# --------------------------------------------------------------------------------------------
# tokenization


def test_encode_pair_moves_trailing_space_and_splits_like_lm_eval():
    ctx, cont = zs.encode_pair(fake_tokenize, "Answer:", " yes", BOS)
    assert ctx == fake_tokenize("Answer:")
    assert cont == [257 + ord("y") - 97, 1 + ord("e"), 1 + ord("s")]  # " y" glued, as in the whole string
    # a trailing space on the context goes to the continuation: same tokens as above
    assert zs.encode_pair(fake_tokenize, "Answer: ", "yes", BOS) == (ctx, cont)
    # empty context: the prefix token alone
    assert zs.encode_pair(fake_tokenize, "", " yes", BOS) == ([BOS], fake_tokenize(" yes"))
    with pytest.raises(SpecQuantError):
        zs.encode_pair(fake_tokenize, "", " yes", None)


# --------------------------------------------------------------------------------------------
# scoring with KV reuse


def _check_against_brute(model, reqs):
    got = zs.score_requests(model, reqs)
    for (ctx, cont), s in zip(reqs, got):
        ll, greedy = brute_force(model, ctx, cont)
        assert s.loglik == pytest.approx(ll, abs=1e-4)
        assert s.greedy == greedy
        assert s.n_tokens == len(cont)


def test_scores_match_brute_force_for_shared_and_differing_contexts():
    m = NgramModel(CORPUS)
    t = fake_tokenize
    # piqa-like: one context, continuations sharing their first words
    _check_against_brute(m, [(t("Question: keep bread?\nAnswer:"), t(" Store the bread in a bag")),
                             (t("Question: keep bread?\nAnswer:"), t(" Store the bread in water"))])
    # hellaswag-like: four different endings
    _check_against_brute(m, [(t("the cat sat"), t(e)) for e in (" on", " under the mat", " x", " on the mat")])
    # winogrande-like: different contexts, one shared continuation
    _check_against_brute(m, [(t("because the trophy"), t(" is large.")), (t("because the suitcase"), t(" is large."))])
    # single-token continuations and a single request
    _check_against_brute(m, [(t("one two"), t(" t")), (t("one two"), t(" f"))])
    _check_against_brute(m, [(t("the cat sat on the"), t(" mat"))])


def test_rewind_state_is_right_between_choices():
    """Scoring a choice after other choices gives the same number as scoring it alone."""
    m = NgramModel(CORPUS)
    t = fake_tokenize
    reqs = [(t("she opened the"), t(c)) for c in (" door", " window and left", " door and walked")]
    together = zs.score_requests(m, reqs)
    for r, s in zip(reqs, together):
        assert zs.score_requests(m, [r])[0].loglik == pytest.approx(s.loglik, abs=1e-5)


def test_kv_reuse_evaluates_the_context_once():
    m = NgramModel(CORPUS)
    t = fake_tokenize
    ctx = t("A long shared context that every ending continues from, many tokens long.")
    endings = [t(e) for e in (" aa bb", " cc dd ee", " ff", " gg hh")]
    stats = zs.ScoreStats()
    m.evaluated = 0
    zs.score_requests(m, [(ctx, e) for e in endings], stats)
    expected = len(ctx) + sum(len(e) - 1 for e in endings)  # the context once, each ending's inputs
    assert m.evaluated == stats.tokens_evaluated == expected
    assert stats.tokens_requested == sum(len(ctx) + len(e) - 1 for e in endings)


def test_long_requests_are_left_truncated_to_the_context():
    m = NgramModel(CORPUS, n_ctx=16)
    t = fake_tokenize
    ctx, cont = t("0123456789abcdefghij0123456789"), t(" the mat")
    s = zs.score_requests(m, [(ctx, cont)])[0]
    seq = (ctx + cont)[-17:]
    ll, _ = brute_force(m, seq[:-len(cont)], cont)
    assert s.loglik == pytest.approx(ll, abs=1e-4)


def test_empty_continuation_is_an_error():
    with pytest.raises(SpecQuantError):
        zs.score_requests(NgramModel(CORPUS), [([1, 2], [])])


# --------------------------------------------------------------------------------------------
# loaders


def test_piqa_loader_prompt_and_labels():
    items = zs.load_task("piqa", FIXTURES)
    assert len(items) == 4 and [i.gold for i in items] == [0, 1, 0, 0]
    ctx, cont = items[0].requests[0]
    assert ctx == "Question: How do I keep bread fresh?\nAnswer:"
    assert cont == " Store the bread in a sealed bag at room temperature."
    assert items[3].requests[1][1].endswith("spoon.  ")  # original trailing spaces are kept
    assert items[0].norm_lengths[0] == len("Store the bread in a sealed bag at room temperature.")


def test_arc_numeric_labels_and_choice_counts():
    items = zs.load_task("arc_easy", FIXTURES)
    assert [len(i.requests) for i in items] == [4, 3, 5]
    assert [i.gold for i in items] == [0, 1, 1]  # "2" among labels 1..3 is index 1
    assert items[0].requests[0] == ("Question: Which of these is a source of light?\nAnswer:", " the Sun")
    assert [i.gold for i in zs.load_task("arc_challenge", FIXTURES)] == [0, 0]


def test_hellaswag_text_format():
    items = zs.load_task("hellaswag", FIXTURES)
    assert [i.gold for i in items] == [3, 0, 1]
    assert items[0].requests[3] == ("Roof shingle removal: A man is sitting on a roof. he",
                                    " starts pulling up roofing on a roof.")


def test_hellaswag_jsonl_preprocess(tmp_path):
    d = tmp_path / "hellaswag"
    d.mkdir()
    doc = {"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
           "endings": ["is [title] ripping  tiles off.", "b", "c", "d"], "label": "2"}
    (d / "hellaswag_val.jsonl").write_text(json.dumps(doc) + "\n")
    (it,) = zs.load_task("hellaswag", tmp_path)
    assert it.requests[0] == ("Roof shingle removal: A man is sitting on a roof. He", " is. ripping tiles off.")
    assert it.gold == 2


def test_hellaswag_bad_line_count(tmp_path):
    d = tmp_path / "hellaswag"
    d.mkdir()
    (d / "hellaswag_val_full.txt").write_text("ctx\n1\na\nb\nc\n")
    with pytest.raises(SpecQuantError, match="multiple of 6"):
        zs.load_task("hellaswag", tmp_path)


def test_winogrande_partial_scoring():
    items = zs.load_task("winogrande", FIXTURES)
    assert [i.gold for i in items] == [0, 1, 0]
    assert items[0].requests == [("The trophy doesn't fit into the suitcase because the trophy", " is too large."),
                                 ("The trophy doesn't fit into the suitcase because the suitcase", " is too large.")]


def test_boolq_openbookqa_siqa_lambada():
    bq = zs.load_task("boolq", FIXTURES)
    assert [i.gold for i in bq] == [1, 0, 1]
    assert bq[0].requests[1] == ("The Sun is the star at the center of the Solar System.\nQuestion: is the sun a star?\nAnswer:", " yes")
    ob = zs.load_task("openbookqa", FIXTURES)  # both schemas in one file
    assert [i.gold for i in ob] == [3, 1]
    assert ob[1].requests[1] == ("A magnet will stick to", " an iron nail")
    si = zs.load_task("social_iqa", FIXTURES)
    assert [i.gold for i in si] == [2, 0]
    assert si[0].requests[0][0].startswith("Q: Tracy didn't go home") and si[0].requests[0][0].endswith("?\nA:")
    lb = zs.load_task("lambada_openai", FIXTURES)
    assert lb[0].requests == [("the cat sat on the mat and the dog sat on the", " mat")]


def test_unknown_task_and_missing_file(tmp_path):
    with pytest.raises(UsageError, match="unknown task"):
        zs.load_task("mmlu", FIXTURES)
    with pytest.raises(SpecQuantError, match="no data file for task 'piqa'"):
        zs.load_task("piqa", tmp_path)


def test_limit_and_malformed_json(tmp_path):
    assert len(zs.load_task("hellaswag", FIXTURES, limit=2)) == 2
    d = tmp_path / "boolq"
    d.mkdir()
    (d / "val.jsonl").write_text('{"question": "q", "passage": "p", "label": 1}\n{oops\n')
    with pytest.raises(SpecQuantError, match="val.jsonl:2"):
        zs.load_task("boolq", tmp_path)


# --------------------------------------------------------------------------------------------
# metrics and end to end


def test_acc_norm_can_differ_from_acc():
    item = zs.Item([("c", " a"), ("c", " bbbbbbbb")], gold=1, norm_lengths=[1, 8])
    scores = [[zs.Scored(-2.0, False, 1), zs.Scored(-4.0, False, 4)]]
    m = zs.multiple_choice_metrics([item], scores, use_norm=True)
    assert m["acc"] == 0.0 and m["acc_norm"] == 1.0


def _gold_corpus(tasks):
    corpus = []
    for name in tasks:
        for it in zs.load_task(name, FIXTURES):
            ctx, cont = it.requests[it.gold]
            corpus += [ctx + cont] * 3
    return corpus


def _wrong_corpus(tasks):
    corpus = []
    for name in tasks:
        for it in zs.load_task(name, FIXTURES):
            for k, (ctx, cont) in enumerate(it.requests):
                if k != it.gold:
                    corpus += [ctx + cont] * 3
    return corpus


def test_a_model_trained_on_the_answers_scores_well_and_one_trained_on_wrong_answers_badly():
    tasks = ["piqa", "arc_easy", "hellaswag", "winogrande", "boolq", "openbookqa", "social_iqa"]
    good = zs.evaluate_tasks(NgramModel(_gold_corpus(tasks)), tasks, FIXTURES, progress=False)
    bad = zs.evaluate_tasks(NgramModel(_wrong_corpus(tasks)), tasks, FIXTURES, progress=False)
    # where the answer's own words decide, an n-gram model trained on them is always right (wrong)
    for name in ("piqa", "arc_easy", "hellaswag", "openbookqa"):
        assert good[name]["acc_norm"] == 1.0 and bad[name]["acc_norm"] == 0.0, name
    # boolq's " yes"/" no" hinge on the passage, which an n-gram cannot read: only overall better
    assert zs.average(good)["acc_norm_or_acc"] > zs.average(bad)["acc_norm_or_acc"] + 0.4
    assert good["hellaswag"]["tokens_evaluated"] < good["hellaswag"]["tokens_without_reuse"]


def test_lambada_greedy_accuracy_and_perplexity():
    model = NgramModel([json.loads(l)["text"] for l in (FIXTURES / "lambada_openai/lambada_test.jsonl").open()] * 5)
    r = zs.evaluate_tasks(model, ["lambada_openai"], FIXTURES, progress=False)["lambada_openai"]
    items = zs.load_task("lambada_openai", FIXTURES)
    assert r["n"] == len(items) == 4
    brute = [brute_force(model, *zs.encode_pair(fake_tokenize, *it.requests[0], BOS)) for it in items]
    assert r["perplexity"] == pytest.approx(math.exp(-sum(b[0] for b in brute) / 4), rel=1e-5)
    assert r["acc"] == sum(b[1] for b in brute) / 4
    assert brute[3][1]  # "ab ab ... ab": the last word is the greedy continuation


# --------------------------------------------------------------------------------------------
# CLI (the native runtime is replaced by the n-gram model)


@pytest.fixture
def fake_runtime(monkeypatch, tmp_path):
    class Scorer(NgramModel):
        def __init__(self, path, n_ctx=2048, threads=None, act_bits=None):
            super().__init__(_gold_corpus(["piqa", "arc_easy"]), n_ctx=n_ctx)

    monkeypatch.setattr(zs_cli, "NativeScorer", Scorer)
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    return f


def _run(argv: list[str]) -> int:
    """The subcommand alone (its own parser), as cli.main would run it."""
    import argparse

    p = argparse.ArgumentParser()
    zs_cli.add_arguments(p)
    return zs_cli.run(p.parse_args(argv))


def test_cli_json(fake_runtime, capsys):
    rc = _run([str(fake_runtime), "--tasks", "piqa,arc_easy", "--data-dir", str(FIXTURES),
               "--json", "--limit", "2", "--no-progress"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tasks"]["piqa"]["n"] == 2 and out["tasks"]["arc_easy"]["n"] == 2
    assert out["tasks"]["piqa"]["acc"] == 1.0
    assert set(out["average"]) == {"acc", "acc_norm_or_acc", "tasks"}


def test_cli_table(fake_runtime, capsys):
    assert _run([str(fake_runtime), "--tasks", "piqa", "--data-dir", str(FIXTURES), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["task", "n", "acc"] and "piqa" in out


def test_cli_errors(fake_runtime, tmp_path):
    with pytest.raises(UsageError, match="unknown task 'nope'"):
        _run([str(fake_runtime), "--tasks", "piqa,nope", "--data-dir", str(FIXTURES)])
    with pytest.raises(SpecQuantError, match="no data file for task 'piqa'"):
        _run([str(fake_runtime), "--tasks", "piqa", "--data-dir", str(tmp_path)])
    with pytest.raises(SpecQuantError, match="no such file"):
        _run([str(tmp_path / "absent.gguf"), "--data-dir", str(FIXTURES), "--tasks", "piqa"])
    with pytest.raises(UsageError, match="no such folder"):
        _run([str(fake_runtime), "--data-dir", str(tmp_path / "nowhere")])
    with pytest.raises(UsageError, match="--limit"):
        _run([str(fake_runtime), "--data-dir", str(FIXTURES), "--limit", "0"])


def test_cli_exit_codes_through_specquant_main(fake_runtime, capsys):
    pytest.importorskip("torch")  # cli.main builds every subcommand's parser (the converter's too)
    assert cli.main(["zeroshot", str(fake_runtime), "--tasks", "nope", "--data-dir", str(FIXTURES)]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert cli.main(["zeroshot", str(fake_runtime), "--tasks", "piqa", "--data-dir", str(FIXTURES / "piqa")]) == 1


def test_log_softmax_matches_a_float64_reference() -> None:
    """The float32-exponential log-softmax stays within 1e-6 nats of float64 over a real-size vocabulary."""
    from specquant_gguf.eval.zeroshot import _log_softmax_at

    rng = np.random.default_rng(3)
    rows = (rng.standard_normal((7, 49152)) * 4).astype(np.float32)
    rows[2, 11] = 40.0  # a confident row, whose target is its argmax
    targets = np.array([5, 100, 11, 49151, 0, 7, 9])
    lp, hit = _log_softmax_at(rows, targets)
    r64 = rows.astype(np.float64)
    ref = r64[np.arange(7), targets] - np.log(np.exp(r64 - r64.max(1, keepdims=True)).sum(1)) - r64.max(1)
    assert np.abs(lp - ref).max() < 1e-6
    assert hit.tolist() == (rows.argmax(1) == targets).tolist() and hit[2]

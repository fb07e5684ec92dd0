"""Several sequences in one forward pass (runtime.batch, native/src/batch.c): each sequence's logits
are bit-identical to a lone Model's on the same tokens, whatever else is in the batch."""
from __future__ import annotations

import numpy as np
import pytest

from specquant_gguf import Model
from specquant_gguf.runtime import ArgumentError, ContextFullError

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14], [20], [30, 31, 32, 33, 34, 35, 36], [40, 41]]


@pytest.fixture(params=["tiny_sq4", "tiny_sq4_spectral", "tiny_q8", "tiny_f16"])
def model_path(request):
    return request.getfixturevalue(request.param).path


def _lone(path, prompt, steps, kv_type="f16"):
    """Greedy run of a lone Model: the logits after the prompt and after each fed token."""
    with Model(path, n_ctx=128, n_threads=2, kv_type=kv_type) as m:
        out = [m.eval_last(prompt)]
        for _ in range(steps):
            out.append(m.eval_last([int(out[-1].argmax())]))
        return out


def test_batch_equals_lone_models(model_path) -> None:
    steps = 12
    want = [_lone(model_path, p, steps) for p in PROMPTS]
    with Model(model_path, n_ctx=128, n_threads=2, n_seq=len(PROMPTS)) as m:
        b = m.batch
        seqs = [i for i, p in enumerate(PROMPTS) for _ in p]
        got = b.eval(seqs, [t for p in PROMPTS for t in p])  # every prompt in one call
        assert got.shape == (len(PROMPTS), m.n_vocab)
        for i in range(len(PROMPTS)):
            assert np.array_equal(got[i], want[i][0]), f"prompt of sequence {i}"
        for step in range(steps):
            toks = [int(w[step].argmax()) for w in want]
            got = b.eval(list(range(len(PROMPTS))), toks)  # one decode step of all
            for i in range(len(PROMPTS)):
                assert np.array_equal(got[i], want[i][step + 1]), f"sequence {i}, step {step}"
        assert [b.n_past(i) for i in range(len(PROMPTS))] == [len(p) + steps for p in PROMPTS]


@pytest.mark.parametrize("n_seq", [2, 3, 4])
def test_batch_few_sequences_equal_lone_models(model_path, n_seq) -> None:
    """Decode steps of 2..4 sequences: the kernels' few-token paths (several tokens against each
    weight row as it is read), bit for bit what each sequence gets on its own."""
    steps = 6
    prompts = PROMPTS[:n_seq]
    want = [_lone(model_path, p, steps) for p in prompts]
    with Model(model_path, n_ctx=128, n_threads=2, n_seq=n_seq) as m:
        b = m.batch
        for i, p in enumerate(prompts):
            assert np.array_equal(b.eval([i] * len(p), p)[0], want[i][0]), f"prompt of sequence {i}"
        for step in range(steps):
            got = b.eval(list(range(n_seq)), [int(w[step].argmax()) for w in want])
            for i in range(n_seq):
                assert np.array_equal(got[i], want[i][step + 1]), f"{n_seq} sequences: sequence {i}, step {step}"


def test_batch_mixed_prefill_and_decode_and_rewind(tiny_sq4) -> None:
    """A prompt joining while other sequences decode; a sequence rewound and reused; want flags."""
    a, c = PROMPTS[0], PROMPTS[4]
    wa, wc = _lone(tiny_sq4.path, a, 6), _lone(tiny_sq4.path, c, 3)
    with Model(tiny_sq4.path, n_ctx=128, n_threads=2, n_seq=2) as m:
        b = m.batch
        assert np.array_equal(b.eval([0] * len(a), a)[0], wa[0])
        for s in range(3):
            b.eval([0], [int(wa[s].argmax())])
        # sequence 0's next step and sequence 1's whole prompt in one call, logits of both last tokens
        got = b.eval([0] + [1] * len(c), [int(wa[3].argmax())] + c)
        assert np.array_equal(got[0], wa[4]) and np.array_equal(got[1], wc[0])
        # flags: every row of the prompt
        b.reset(1)
        rows = b.eval([1] * len(c), c, want="all")
        with Model(tiny_sq4.path, n_ctx=128, n_threads=2) as lone:
            assert np.array_equal(rows, lone.eval(c))
        # rewind sequence 1 to 2 tokens, feed the rest again: the same logits
        b.set_n_past(1, 2)
        assert b.tokens(1) == c[:2]
        assert np.array_equal(b.eval([1] * (len(c) - 2), c[2:])[0], wc[0])
        # the model's own cache is separate
        assert m.n_past == 0


def test_batch_errors(tiny_sq4) -> None:
    with Model(tiny_sq4.path, n_ctx=16, n_threads=1, n_seq=2) as m:
        b = m.batch
        with pytest.raises(ArgumentError, match="sequence id"):
            b.eval([2], [5])
        with pytest.raises(ArgumentError, match="out of range"):
            b.eval([0], [10 ** 6])
        with pytest.raises(ContextFullError):
            b.eval([0] * 17, [5] * 17)
        assert b.n_past(0) == 0  # nothing stored by a failed call
        b.eval([0] * 16, [5] * 16)
        with pytest.raises(ContextFullError):
            b.eval([0, 1], [5, 5])
        assert b.n_past(1) == 0
        with pytest.raises(ArgumentError):
            b.set_n_past(0, 17)
    with pytest.raises(ArgumentError):
        Model(tiny_sq4.path, n_ctx=16, n_seq=-1)
    m = Model(tiny_sq4.path, n_ctx=16, n_threads=1, n_seq=1)
    b = m.batch
    m.close()
    with pytest.raises(Exception, match="closed"):
        b.eval([0], [5])

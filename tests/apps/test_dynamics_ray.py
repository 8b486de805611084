"""Training dynamics on Ray (``bigram_dynamics_ray``): each checkpoint is loaded by a worker
from its folder, the driver assembles; the result is the local one, number for number.

The tests share ONE local Ray session (2 CPUs; module-scoped, Ray start-up is slow on 2
cores) and skip when Ray is not installed. The local reference runs with one torch thread,
as each 1-CPU worker does, so the two results are equal exactly.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _tiny import save_tiny  # noqa: E402

import jetex  # noqa: E402
from jetex.apps.corpus import unigram_probs  # noqa: E402
from jetex.apps.dynamics import bigram_dynamics, checkpoint_summary, pair_logprobs  # noqa: E402
from jetex.apps.dynamics_ray import CheckpointBackend, bigram_dynamics_ray  # noqa: E402
from jetex.errors import InputError  # noqa: E402
from jetex.ngrams.distributed import FAULT_ENV, ClusterError  # noqa: E402

TEXT = "the cat sat on the mat .\n\nthe dog sat on the mat .\n\na king and a queen ."
KW = dict(top=40, k=20, exclude_self=True)


@pytest.fixture(scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Three 'checkpoints' of one tiny GPT-2 (different seeds), saved as HF folders."""
    root = tmp_path_factory.mktemp("gpt2-series")
    return [str(save_tiny(root / f"step-{s}", "gpt2", seed=s)) for s in (1, 2, 3)]


@pytest.fixture(scope="module")
def models(ckpts, one_thread):
    return [jetex.load(c) for c in ckpts]


def test_two_workers_equal_the_local_computation(ray_session, ckpts, models, one_thread):
    uni = unigram_probs(models[-1].tokenizer, TEXT, models[-1].vocab_size)
    kw = dict(KW, unigram=uni, corpus_text=TEXT, steps=[1, 2, 3], losses=[3.0, 2.5, 2.0])
    local = bigram_dynamics(models, **kw)
    remote = bigram_dynamics_ray(ckpts, workers=2, **kw)  # the driver loads the last checkpoint itself
    assert remote.to_dict() == local.to_dict()
    # every part is there: T = 3, so trajectories include the automatically chosen fallen pairs
    assert remote.hit_ratio[-1] == 1.0 and len(remote.mass_corpus) == 3 and len(remote.trajectories) >= 3
    assert remote.model_names == ["step-1", "step-2", "step-3"]


def test_second_pass_goes_to_the_worker_holding_the_checkpoint(ray_session, ckpts, models, one_thread):
    ray = ray_session
    cp = [(30, 31), (31, 30), (7, 10)]
    with CheckpointBackend(ckpts, models[-1], workers=2, **KW) as be:
        sums = be.summaries(cp)
        vals = be.pair_values([(30, 31), (8, 9)])
        loads = sum(i["loads"] for i in ray.get([a.info.remote() for a in be._actors]))
    for s, m in zip(sums, models):
        want = checkpoint_summary(m, "direct", corpus_pairs=cp, **KW)
        assert (s.name, s.top, s.exact, s.fingerprint) == (want.name, want.top, want.exact, want.fingerprint)
        assert torch.equal(s.corpus_logprobs, want.corpus_logprobs)
    assert torch.equal(vals, torch.stack([pair_logprobs(m, "direct", [(30, 31), (8, 9)]) for m in models]))
    # 3 loads for the sweeps; in the second pass each of the 2 workers starts with the checkpoint
    # it still holds, so only 1 more load
    assert loads == 4


def test_worker_killed_once_is_retried(ray_session, ckpts, models, one_thread, tmp_path, monkeypatch):
    marks = tmp_path / "faults"
    monkeypatch.setenv(FAULT_ENV, f"shard=1,times=1,dir={marks}")  # "shard" = checkpoint index here
    pairs = [(30, 31), (7, 10)]  # given bigrams, and the driver's model given
    res = bigram_dynamics_ray(ckpts, reference=models[-1], bigrams=pairs, workers=2, retries=2, **KW)
    assert len(list(marks.iterdir())) == 1  # the worker evaluating checkpoint 1 did die once
    assert res.to_dict() == bigram_dynamics(models, bigrams=pairs, **KW).to_dict()
    assert len(res.trajectories) == 2


def test_worker_dying_repeatedly_stops_with_one_line(ray_session, ckpts, tmp_path, monkeypatch):
    marks = tmp_path / "faults"
    monkeypatch.setenv(FAULT_ENV, f"shard=2,times=always,dir={marks}")
    with pytest.raises(ClusterError) as e:
        bigram_dynamics_ray(ckpts, workers=1, retries=1, **KW)
    msg = str(e.value)
    assert "\n" not in msg and "checkpoint 3 of 3" in msg and "restarted 1 time(s)" in msg and "rerun" in msg
    assert re.search(r"step-3", msg)
    assert len(list(marks.iterdir())) == 2  # first try + one retry, then it stopped


def test_bad_series_and_wrong_reference_are_refused(ray_session, ckpts, models, tmp_path):
    llama = str(save_tiny(tmp_path / "llama", "llama"))
    with pytest.raises(InputError, match="different architectures") as e:  # checked on the worker that loads it
        bigram_dynamics_ray([llama, *ckpts], workers=1, **KW)
    assert "\n" not in str(e.value)
    # the driver's model is not the last checkpoint the workers load
    with pytest.raises(ClusterError, match="fingerprint"):
        bigram_dynamics_ray(ckpts, reference=models[0], workers=1, **KW)
    with pytest.raises(InputError, match="at least two"):
        bigram_dynamics_ray(ckpts[:1], **KW)


def test_missing_ray_is_one_line(ckpts, models, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ClusterError, match=r"pip install 'jetex\[ray\]'"):
        bigram_dynamics_ray(ckpts, reference=models[-1], **KW)

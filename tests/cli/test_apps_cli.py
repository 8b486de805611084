"""``jetex diff / index / dynamics / roles`` end to end through ``main(argv)`` on tiny models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from jetex.cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _tiny import save_tiny  # noqa: E402


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Three 'checkpoints' of one tiny Llama (different seeds), one GPT-2, one with another tokenizer."""
    root = tmp_path_factory.mktemp("apps-cli")
    out = {f"step-{s}": str(save_tiny(root / f"step-{s}", "llama", seed=s)) for s in (10, 20, 30)}
    out["gpt2"] = str(save_tiny(root / "gpt2", "gpt2"))
    other = save_tiny(root / "other", "llama")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps"))
    from apps_tiny import other_tokenizer

    other_tokenizer().save_pretrained(other)
    out["other"] = str(other)
    return out


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [l for l in err if l.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


def test_diff_self_and_two_models(ckpts, tmp_path, capsys):
    a, b = ckpts["step-10"], ckpts["step-20"]
    assert main(["diff", a, a, "--top", "50", "--k", "10", "--step", "10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["identical"] and not out["entered"] and not out["increases"]
    html = tmp_path / "d.html"
    assert main(["diff", a, b, "--top", "50", "--k", "10", "--step", "10", "--html", str(html)]) == 0
    text = capsys.readouterr().out
    assert "side by side" in text and "entered B's top 50" in text and f"wrote {html}" in text
    assert "<table>" in html.read_text() and "Largest probability increases" in html.read_text()


def test_diff_of_databases(ckpts, tmp_path, capsys):
    from jetex.models.load import load
    from jetex.ngrams import extract_ngrams

    dbs = []
    for name in ("step-10", "step-20"):
        db = tmp_path / f"{name}.duckdb"
        extract_ngrams(load(ckpts[name]), ["direct"], db=db, top_k=10, exclude_self=True, global_top=50,
                       progress=False, fidelity_sample=None)
        dbs.append(str(db))
    assert main(["diff", *dbs, "--top", "50", "--step", "10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert not out["identical"] and not out["changes_exhaustive"] and len(out["top_a"]) == 50
    assert main(["diff", dbs[0], ckpts["step-10"]]) != 0
    assert "two models or two n-gram databases" in _err(capsys)
    assert main(["diff", *dbs, "--path", "mlp:0"]) != 0
    assert "no finished bigram run" in _err(capsys)


def test_diff_refuses_other_tokenizer(ckpts, capsys):
    assert main(["diff", ckpts["step-10"], ckpts["other"], "--top", "10", "--k", "5"]) != 0
    assert "tokenizers differ" in _err(capsys)


def test_index(ckpts, tmp_path, capsys):
    kw = tmp_path / "kw.txt"
    kw.write_text("# animals\ncat\ndog\nzebra\nqueen\n")
    assert main(["index", "--keywords", str(kw), "--model", ckpts["step-10"], "--baseline", "1", "--json"]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["n_tokens"] == 3 and out["dropped"] == ["zebra"] and 0 < out["index"] < 1
    assert "warning: 1 of 4 keywords" in cap.err and "zebra" in cap.err
    assert main(["index", "--keywords", str(kw), "--model", ckpts["step-10"], "--model", ckpts["step-20"]]) == 0
    assert "knowledge index" in capsys.readouterr().out
    assert main(["index", "--keywords", str(tmp_path / "nope.txt"), "--model", ckpts["step-10"]]) != 0
    assert "not found" in _err(capsys)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    assert main(["index", "--keywords", str(empty), "--model", ckpts["step-10"]]) != 0
    assert "no keywords" in _err(capsys)
    none = tmp_path / "none.txt"
    none.write_text("zebra\nunicorn\n")
    assert main(["index", "--keywords", str(none), "--model", ckpts["step-10"]]) != 0
    assert "none of the 2 keywords" in _err(capsys)


def test_dynamics(ckpts, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat .\n\nthe dog ran to the door .\n")
    series = [ckpts[f"step-{s}"] for s in (10, 20, 30)]
    prefix = tmp_path / "dyn"
    assert main(["dynamics", *series, "--top", "30", "--corpus", str(corpus), "--png", str(prefix),
                 "--bigram", "the", "cat", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hit_ratio"][-1] == 1.0 and out["steps"] == [10, 20, 30]
    assert len(out["mass_own"]) == 3 and len(out["trajectories"]) == 1
    assert all(Path(p).is_file() for p in out["figures"])
    assert main(["dynamics", *series, "--top", "30"]) == 0
    assert "step-30" in capsys.readouterr().out
    for argv, msg in [
        (["dynamics", series[0]], "at least two"),
        (["dynamics", series[0], ckpts["gpt2"]], "different architectures"),
        (["dynamics", series[0], ckpts["other"]], "different tokenizers"),
        (["dynamics", *series, "--bigram", "the cat", "sat"], "not one"),
        (["dynamics", *series, "--corpus", str(tmp_path / "missing.txt")], "not found"),
    ]:
        assert main(argv) != 0, argv
        assert msg in _err(capsys)


def test_roles(ckpts, capsys, tmp_path):
    import random

    from _tiny import WORDS

    m = ckpts["step-10"]
    rng = random.Random(0)
    words = [w for w in WORDS if w.isalpha()]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(120)))
    assert main(["roles", "--model", m, "--layers", "0,1", "--top", "3", "--corpus", str(corpus), "--heads",
                 "--controls", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["component"] for r in out][:2] == ["mlp.0", "mlp.1"] and len(out) == 2 + 4
    assert all(r["ablation"]["n_contexts"] >= 30 and r["ablation"]["mode"] == "mean" for r in out)
    assert main(["roles", "--model", m, "--layers", "1", "--ablate-only", "--ablation", "zero", "--corpus", str(corpus)]) == 0
    assert "zero-ablation" in capsys.readouterr().out
    small = tmp_path / "small.txt"
    small.write_text("the cat sat on the mat .")
    assert main(["roles", "--model", m, "--layers", "1", "--corpus", str(small)]) != 0
    err = _err(capsys)
    assert "contexts containing its top n-grams" in err and len(err.strip().splitlines()) == 1
    assert main(["roles", "--model", m, "--layers", "mlp.1", "--no-ablate"]) == 0
    assert "mlp.1" in capsys.readouterr().out
    assert main(["roles", "--model", m, "--layers", "5"]) != 0
    assert "out of range" in _err(capsys)
    assert main(["roles", "--model", m, "--layers", "x"]) != 0
    assert "unknown --layers entry 'x'; valid: mlp.0" in _err(capsys)
    assert main(["roles", "--model", m, "--layers", "attn.0", "--no-ablate"]) != 0
    assert "is not a block of kind mlp" in _err(capsys)
    # the store's score names; the old name 'centred' is refused with a one-line hint
    assert main(["roles", "--model", m, "--layers", "1", "--no-ablate", "--score", "logit", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["component"] == "mlp.1"
    for bad, msg in [("centred", "score 'centred' is now called 'logit'"), ("bogus", "unknown score 'bogus'; use one of")]:
        assert main(["roles", "--model", m, "--layers", "1", "--no-ablate", "--score", bad]) != 0
        err = _err(capsys)
        assert msg in err and len(err.strip().splitlines()) == 1, err


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends


def test_dynamics_on_ray_equals_local(tmp_path_factory, tmp_path, capsys):
    """`jetex dynamics --backend ray --workers 2` (a local Ray instance started and stopped by
    the command) prints the same JSON as the local run, on three tiny GPT-2 checkpoints."""
    pytest.importorskip("ray")
    import torch

    root = tmp_path_factory.mktemp("gpt2-ckpts")
    series = [str(save_tiny(root / f"step-{s}", "gpt2", seed=s)) for s in (1, 2, 3)]
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat .\n\nthe dog ran to the door .\n")
    argv = ["dynamics", *series, "--top", "30", "--corpus", str(corpus), "--bigram", "the", "cat", "--json"]
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # as each 1-CPU worker: the numbers are then equal exactly
    try:
        assert main(argv) == 0
        local = json.loads(capsys.readouterr().out)
        assert main(argv + ["--backend", "ray", "--workers", "2", "--retries", "1"]) == 0
        remote = json.loads(capsys.readouterr().out)
    finally:
        torch.set_num_threads(old)
    assert remote == local and remote["steps"] == [1, 2, 3] and len(remote["trajectories"]) == 1
    assert main(argv[:-1] + ["--address", "127.0.0.1:1"]) != 0
    assert "--address needs --backend ray" in _err(capsys)
    port = _closed_port()
    assert main([*argv, "--backend", "ray", "--address", f"127.0.0.1:{port}"]) != 0
    assert f"cannot reach a Ray cluster at 127.0.0.1:{port}" in _err(capsys)

"""Pretraining dynamics through jet bigrams (paper Sec. 5.2, Table 4, Fig. 4, Fig. 5), end to end.

This example *trains* the model it then analyses, from scratch, on real text every machine
with Python has, and writes the analysis figures next to this script:

1. Corpus: the docstrings of the Python standard library (:func:`jetex.apps.corpus.stdlib_docstrings`:
   every module/class/function docstring of ``sysconfig.get_paths()['stdlib']``, tests and
   site-packages skipped; ~1.5 MB of English technical prose on CPython 3.11). 95% of the
   docstrings (every 20th held out) are the training text.
2. Tokenizer: a byte-level BPE with 2048 tokens trained on that corpus with the
   ``tokenizers`` library (special token ``<|endoftext|>`` = BOS = EOS), so full V×V bigram
   tables are cheap (4.2M entries).
3. Model: GPT-2 architecture (``transformers.GPT2LMHeadModel``), 2 layers, d = 128, 4 heads,
   context 128, tied embeddings (~0.68M parameters), AdamW (lr 3e-3, 50 warm-up steps,
   cosine decay), batches of 16 × 128 tokens. Checkpoints (``save_pretrained`` safetensors +
   tokenizer, each loadable with ``jetex.load(folder)``) at the steps in ``CHECKPOINTS``.
4. Analysis: :func:`jetex.apps.dynamics.bigram_dynamics` on the ``direct`` path over the
   checkpoints (top-10 bigrams per checkpoint, hit ratio of the final top-1K, pseudo-joint
   mass with unigram frequencies of the held-out docstrings, trajectories of chosen
   bigrams), written as ``examples/figures/dynamics_*.png``, ``dynamics.json`` and
   ``dynamics.md``.

Checkpoints go to ``--out`` (default ``/tmp/jetex-train-dynamics``), never into the repo.
The same analysis from the command line::

    jetex dynamics /tmp/jetex-train-dynamics/step-* --corpus stdlib-docs --png out/dyn

Usage::

    .venv/bin/python examples/train_dynamics.py                 # train (~5-10 min on 1 core) + analyse
    .venv/bin/python examples/train_dynamics.py --skip-training # re-analyse existing checkpoints
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

CHECKPOINTS = [0, 25, 50, 100, 200, 300, 400, 600, 800, 1000, 1200]
VOCAB = 2048
CONTEXT = 128
BATCH = 16
LR = 3e-3
WARMUP = 50
EOT = "<|endoftext|>"
HERE = Path(__file__).resolve().parent


def split_corpus() -> tuple[list[str], list[str]]:
    """Docstrings of the standard library, split 19:1 into train and held-out (deterministic)."""
    from jetex.apps.corpus import stdlib_docstrings

    docs = [d for d in stdlib_docstrings().split("\n\n") if d.strip()]
    train = [d for i, d in enumerate(docs) if i % 20 != 0]
    held = [d for i, d in enumerate(docs) if i % 20 == 0]
    return train, held


def train_tokenizer(docs: list[str]):
    """Byte-level BPE (``VOCAB`` tokens) as a ``PreTrainedTokenizerFast`` with BOS = EOS = ``EOT``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT)


def encode(tokenizer, docs: list[str]) -> torch.Tensor:
    """All documents tokenized and joined, each followed by ``EOT``: a 1-D id tensor."""
    eot = tokenizer.convert_tokens_to_ids(EOT)
    ids: list[int] = []
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.long)


def batches(ids: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    start = torch.randint(0, len(ids) - CONTEXT - 1, (n,), generator=gen)
    return torch.stack([ids[int(s) : int(s) + CONTEXT] for s in start])


@torch.no_grad()
def held_out_loss(model, ids: torch.Tensor, n_batches: int = 8) -> float:
    gen = torch.Generator().manual_seed(1234)
    model.eval()
    losses = [float(model(input_ids=(x := batches(ids, BATCH, gen)), labels=x).loss) for _ in range(n_batches)]
    model.train()
    return sum(losses) / len(losses)


def train(out: Path, seed: int = 0) -> dict:
    """Train the tokenizer and the model; save every checkpoint in ``out/step-NNNNN``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    t0 = time.perf_counter()
    train_docs, held_docs = split_corpus()
    tokenizer = train_tokenizer(train_docs)
    train_ids, held_ids = encode(tokenizer, train_docs), encode(tokenizer, held_docs)
    eot = tokenizer.convert_tokens_to_ids(EOT)
    print(f"corpus: {len(train_docs)} train / {len(held_docs)} held-out docstrings, "
          f"{len(train_ids)} / {len(held_ids)} tokens; tokenizer {len(tokenizer)} tokens ({time.perf_counter() - t0:.1f} s)")
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=CONTEXT, n_embd=128, n_layer=2, n_head=4,
                     bos_token_id=eot, eos_token_id=eot, tie_word_embeddings=True)
    model = GPT2LMHeadModel(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01, betas=(0.9, 0.98))
    total = CHECKPOINTS[-1]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    gen = torch.Generator().manual_seed(seed)
    log = {"params": n_params, "steps": [], "train_loss": [], "held_out_loss": [], "tokens_seen": []}
    out.mkdir(parents=True, exist_ok=True)
    running: list[float] = []
    model.train()
    for step in range(total + 1):
        if step in CHECKPOINTS:
            folder = out / f"step-{step:05d}"
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            hl = held_out_loss(model, held_ids)
            tl = sum(running) / len(running) if running else hl
            running = []
            log["steps"].append(step)
            log["train_loss"].append(tl)
            log["held_out_loss"].append(hl)
            log["tokens_seen"].append(step * BATCH * CONTEXT)
            print(f"step {step:5d}  train loss {tl:.3f}  held-out loss {hl:.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
        if step == total:
            break
        x = batches(train_ids, BATCH, gen)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running.append(float(loss.detach()))
    log["train_seconds"] = time.perf_counter() - t0
    log["threads"] = torch.get_num_threads()
    (out / "training_log.json").write_text(json.dumps(log, indent=2))
    return log


def analyse(out: Path, figures: Path) -> None:
    """Run the dynamics analysis on the checkpoints in ``out`` and write figures + a summary."""
    from jetex.apps.corpus import unigram_probs
    from jetex.apps.dynamics import bigram_dynamics, dynamics_markdown
    from jetex.models.load import load
    from jetex.viz.apps import save_dynamics_figures

    folders = sorted(p for p in out.glob("step-*") if p.is_dir())
    if not folders:
        raise SystemExit(f"no checkpoints in {out}: run without --skip-training first")
    log = json.loads((out / "training_log.json").read_text())
    t0 = time.perf_counter()
    models = [load(f) for f in folders]
    held = "\n\n".join(split_corpus()[1])
    unigram = unigram_probs(models[-1].tokenizer, held, models[-1].vocab_size)
    res = bigram_dynamics(
        models,
        labels=[f.name.removeprefix("step-").lstrip("0") or "0" for f in folders],
        steps=[int(f.name.removeprefix("step-")) for f in folders],
        path="direct",
        unigram=unigram,
        corpus_text=held,
        losses=log["held_out_loss"] if len(log["held_out_loss"]) == len(folders) else None,
    )
    print(f"analysis of {len(folders)} checkpoints: {time.perf_counter() - t0:.1f} s")
    figures.mkdir(parents=True, exist_ok=True)
    written = save_dynamics_figures(res, figures / "dynamics")
    (figures / "dynamics.json").write_text(json.dumps(res.to_dict(), indent=1, ensure_ascii=False))
    md = dynamics_markdown(res)
    header = (
        "# Training dynamics of a small GPT-2 through jet bigrams (examples/train_dynamics.py)\n\n"
        f"Model: GPT-2 architecture, 2 layers, d=128, {log['params']:,} parameters, BPE vocabulary {VOCAB}, "
        f"trained from scratch for {CHECKPOINTS[-1]} steps of {BATCH}×{CONTEXT} tokens on the Python standard "
        f"library's docstrings; training took {log['train_seconds']:.0f} s on {log['threads']} CPU thread(s). "
        "Path: `direct` (η → υ), self-transitions excluded. Unigram frequencies for the pseudo-joint mass "
        "come from the held-out docstrings.\n\n"
    )
    (figures / "dynamics.md").write_text(header + md)
    for p in written:
        print("wrote", p)
    print("wrote", figures / "dynamics.md")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/jetex-train-dynamics"), help="checkpoint folder")
    ap.add_argument("--figures", type=Path, default=HERE / "figures", help="where figures are written")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine may be shared)")
    ap.add_argument("--skip-training", action="store_true", help="analyse existing checkpoints only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_training:
        train(args.out)
    analyse(args.out, args.figures)


if __name__ == "__main__":
    main()

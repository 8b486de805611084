"""Whole-model fine-tuning on Python code vs a prose control, read through jet bigram diffs
(paper Sec. 5.3, Table 5), with a criterion fixed before the runs.

The paper diffs the jet bigrams of Llama-2-7B and CodeLlama and finds coding bigrams
(``**kwargs``, getters) among those that rise. This script runs a controlled miniature:

1. **Model**: SmolLM2-135M-Instruct (``jetex.load('smollm2-135m')``), ALL parameters trained
   (tied embedding/unembedding included), through the Hugging Face module's own forward pass.
2. **Data every machine has**: code = the Python standard library's ``.py`` files
   (:func:`jetex.apps.corpus.stdlib_sources`, files over 40 kB skipped, shuffled with a fixed
   seed; the first 10 % of the files are held out); prose = the sentences of the standard
   library's docstrings (:func:`jetex.apps.corpus.sentences`, ``>>>`` examples dropped; the
   first 10 % of the docstrings held out). Both are cut into ``--seq`` token sequences; the
   code run and the prose **control run** see the same number of sequences, the same batch
   size, learning rate, number of steps and batch order.
3. **Training**: AdamW (constant lr, gradient clipping at 1.0), ``--steps`` steps of
   ``--batch`` sequences. Each run checkpoints every ``--ckpt-every`` steps to
   ``--out/<run>/`` (weights and optimizer moments as safetensors, the step count and losses
   as JSON; no pickle) and resumes from there when restarted. ``--device cuda`` runs on a GPU.
   Held-out code and prose losses are measured before and after.
4. **Diff** (``--analyse``): base vs code-tuned and base vs prose-tuned, on the bigram path
   ``direct`` (η → υ: the embedding, the final norm and the tied unembedding, all trained
   here) — and ``--paths`` to add e.g. ``mlp:29``. Input rows: the ``--rows`` most frequent
   tokens of the two training corpora (half from each; outputs over the whole vocabulary);
   self-transitions excluded. Two non-saturating scores (docs/ngram_scores.md):
   the centred logit  c(b|a) = z(b|a) − mean_b' z(b'|a)  and the PMI against the path's mean
   output distribution  log P(b|a) − log mean_{a'∈rows} P(b|a'). A pair's gain is its score
   in the tuned model minus its score in the base model.
5. **Pre-registered criterion** (docs/applications.md, written before the runs): a pair is
   code-related when both tokens are code tokens (:func:`make_code_token`). Primary:
   the number of code-related pairs among the 50 largest PMI gains on ``direct``, code run vs
   control run; the effect is *detected* when the code run has more and a one-sided Fisher
   exact test on the 2×2 table gives p < 0.05. Secondary: the same for the 1,000 largest
   gains and for the centred logit.

Results go to ``examples/figures/finetune_code_diff.md`` and ``.json``.

Usage::

    python examples/finetune_code_diff.py --run code  &   # the two trainings (resumable)
    python examples/finetune_code_diff.py --run prose &
    python examples/finetune_code_diff.py --analyse       # diffs + criterion

    python examples/finetune_code_diff.py --device cuda --steps 600 --batch 16 --seq 256   # a GPU run

Runtime measured for the committed results (2026-12-02, the 2-core machine shared with seven
other jobs, load average 18–27, 1 thread per run, the two runs side by side): one step of
4 × 128 tokens 208–330 s, so both runs were stopped after 5 steps (1,245 s of training each),
held-out evaluation ~125 s per model, ``--analyse`` 640 s. A 0.3-nat drop needs a GPU run
(``--device cuda``; see docs/applications.md for what was reached and what such a run needs).
"""

from __future__ import annotations

import argparse
import builtins
import json
import keyword
import math
import os
import random
import re
import time
from collections import Counter
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MODEL = "smollm2-135m"

_OPS = {"(", ")", "[", "]", "{", "}", ":", "):", "()", "=", "==", "!=", "+=", "-=", "->", ".", ",", "*", "**", "@",
        "#", "%", "<", ">", "<=", ">=", "+", "-", "/", "//", "'", '"', '"""', "'''", "_", "__", "\\", "|", "&", "~"}


# --------------------------------------------------------------------------- data
def code_texts(seed: int = 0, max_bytes: int = 40_000) -> list[str]:
    """Texts of the standard library's .py files (shuffled with ``seed``)."""
    from jetex.apps.corpus import stdlib_sources

    files = stdlib_sources(max_bytes=max_bytes)
    random.Random(seed).shuffle(files)
    out = []
    for p in files:
        try:
            out.append(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return out


def prose_texts(seed: int = 0) -> list[str]:
    """Prose paragraphs: the sentences of each standard-library docstring, joined (shuffled)."""
    from jetex.apps.corpus import _docstrings_of, sentences, stdlib_sources

    docs = []
    for p in stdlib_sources():
        try:
            docs.extend(_docstrings_of(p.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
    out = [" ".join(sentences(d)) for d in docs]
    out = [t for t in out if t]
    random.Random(seed).shuffle(out)
    return out


def split_sequences(tokenizer, texts: list[str], n: int, seq: int, n_held: int = 8, held_frac: float = 0.1
                    ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(train ``[n, seq]``, held-out ``[n_held, seq]``, n_held): the first ``held_frac`` of the
    texts give the held-out sequences, the rest the training ones."""
    k = max(1, int(len(texts) * held_frac))

    def cut(ts: list[str], m: int) -> torch.Tensor:
        ids: list[int] = []
        for t in ts:
            ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
            ids.append(tokenizer.eos_token_id)
            if len(ids) >= m * seq:
                break
        m = min(m, len(ids) // seq)
        return torch.tensor(ids[: m * seq], dtype=torch.long).reshape(m, seq)

    held = cut(texts[:k], n_held)
    train = cut(texts[k:], n)
    if train.shape[0] < n:
        raise SystemExit(f"the corpus gives only {train.shape[0]} training sequences of {seq} tokens, {n} asked")
    return train, held, held.shape[0]


def data(tokenizer, run: str, n: int, seq: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train ids of ``run``, held-out code ids, held-out prose ids)."""
    ctr, cheld, _ = split_sequences(tokenizer, code_texts(), n, seq)
    ptr, pheld, _ = split_sequences(tokenizer, prose_texts(), n, seq)
    return (ctr if run == "code" else ptr), cheld, pheld


# --------------------------------------------------------------------------- training
def held_loss(hf, ids: torch.Tensor, device: str, batch: int = 8) -> float:
    """Mean next-token cross-entropy of the model on ``ids`` ``[n, T]`` (nats/token)."""
    tot, cnt = 0.0, 0
    with torch.no_grad():
        for s in range(0, ids.shape[0], batch):
            x = ids[s : s + batch].to(device)
            out = hf(input_ids=x, labels=x)
            k = x.numel() - x.shape[0]
            tot += float(out.loss) * k
            cnt += k
    return tot / cnt


def _save_atomic_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def save_checkpoint(folder: Path, hf, opt, state: dict) -> None:
    """Weights (HF folder), AdamW moments (safetensors) and ``state`` (JSON); the JSON is
    written last, so a checkpoint counts only when complete."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(folder / "model")
    names = {id(p): n for n, p in hf.named_parameters()}
    moments = {}
    for p, st in opt.state.items():
        n = names[id(p)]
        moments[f"{n}::exp_avg"] = st["exp_avg"].detach().cpu().contiguous()
        moments[f"{n}::exp_avg_sq"] = st["exp_avg_sq"].detach().cpu().contiguous()
    save_file(moments, str(folder / "optim.tmp"))
    os.replace(folder / "optim.tmp", folder / "optim.safetensors")
    _save_atomic_json(folder / "state.json", state)


def load_checkpoint(folder: Path, hf, opt, device: str) -> dict | None:
    from safetensors.torch import load_file

    if not (folder / "state.json").is_file():
        return None
    state = json.loads((folder / "state.json").read_text())
    from transformers import AutoModelForCausalLM

    sd = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32).state_dict()
    hf.load_state_dict(sd, strict=False)
    moments = load_file(str(folder / "optim.safetensors"))
    for n, p in hf.named_parameters():
        if f"{n}::exp_avg" in moments:
            opt.state[p] = {"step": torch.tensor(float(state["step"])),
                            "exp_avg": moments[f"{n}::exp_avg"].to(device),
                            "exp_avg_sq": moments[f"{n}::exp_avg_sq"].to(device)}
    return state


def train(args) -> None:
    import jetex

    torch.manual_seed(0)
    m = jetex.load(MODEL)
    hf = m.hf.to(args.device).float()
    tok = m.tokenizer
    train_ids, held_code, held_prose = data(tok, args.run, args.n_train, args.seq)
    folder = args.out / args.run
    for p in hf.parameters():
        p.requires_grad_(True)
    n_params = sum(p.numel() for p in hf.parameters())
    opt = torch.optim.AdamW(hf.parameters(), lr=args.lr, weight_decay=0.0)
    state = load_checkpoint(folder, hf, opt, args.device)
    if state is None:
        hf.eval()
        t = time.perf_counter()
        state = {"run": args.run, "step": 0, "losses": [], "step_seconds": [], "curve": [],
                 "held_code_before": held_loss(hf, held_code, args.device),
                 "held_prose_before": held_loss(hf, held_prose, args.device),
                 "eval_seconds": time.perf_counter() - t,
                 "config": {"steps": args.steps, "batch": args.batch, "seq": args.seq, "lr": args.lr, "warmup": args.warmup,
                            "n_train": args.n_train, "n_held_code": held_code.shape[0],
                            "n_held_prose": held_prose.shape[0], "trained_params": n_params,
                            "device": args.device, "threads": torch.get_num_threads()}}
        state["curve"].append([0, state["held_code_before"]])
        print(f"[{args.run}] base held-out loss: code {state['held_code_before']:.4f}, "
              f"prose {state['held_prose_before']:.4f} ({state['eval_seconds']:.0f} s)", flush=True)
    else:
        print(f"[{args.run}] resumed at step {state['step']}", flush=True)
    order = torch.randperm(args.n_train, generator=torch.Generator().manual_seed(1))  # same order both runs
    hf.train()
    deadline = None if args.stop_at is None else time.time() + args.stop_at
    reached = False
    while state["step"] < args.steps and not reached:
        s = state["step"]
        idx = order[torch.arange(s * args.batch, (s + 1) * args.batch) % args.n_train]
        x = train_ids[idx].to(args.device)
        for group in opt.param_groups:  # linear warm-up over --warmup steps, then constant
            group["lr"] = args.lr * min(1.0, (s + 1) / args.warmup) if args.warmup > 0 else args.lr
        t = time.perf_counter()
        loss = hf(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        state["step"] = s + 1
        state["losses"].append(float(loss.detach()))
        state["step_seconds"].append(time.perf_counter() - t)
        print(f"[{args.run}] step {s + 1}/{args.steps} loss {state['losses'][-1]:.4f} "
              f"({state['step_seconds'][-1]:.1f} s)", flush=True)
        if args.eval_every and state["step"] % args.eval_every == 0 and state["step"] < args.steps:
            hf.eval()
            t = time.perf_counter()
            h = held_loss(hf, held_code, args.device)
            state.setdefault("curve", []).append([state["step"], h])
            state["eval_seconds"] += time.perf_counter() - t
            hf.train()
            print(f"[{args.run}] step {state['step']}: held-out code loss {h:.4f} "
                  f"({h - state['held_code_before']:+.4f} nats)", flush=True)
            reached = bool(args.target) and args.target > 0 and state["held_code_before"] - h >= args.target
        last = (state["step"] == args.steps or reached
                or (deadline is not None and time.time() > deadline))
        if state["step"] % args.ckpt_every == 0 or last:
            save_checkpoint(folder, hf, opt, state)
            tok.save_pretrained(folder / "model")  # so that jetex.load / jetex ngrams extract -m can read it
        if last:
            break
    hf.eval()
    if "held_code_after" not in state or state.get("after_step") != state["step"]:
        state["held_code_after"] = held_loss(hf, held_code, args.device)
        state["held_prose_after"] = held_loss(hf, held_prose, args.device)
        state["after_step"] = state["step"]
        if not state["curve"] or state["curve"][-1][0] != state["step"]:
            state["curve"].append([state["step"], state["held_code_after"]])
        _save_atomic_json(folder / "state.json", state)
    print(f"[{args.run}] step {state['step']}: held-out code loss {state['held_code_before']:.4f} → "
          f"{state['held_code_after']:.4f}, prose {state['held_prose_before']:.4f} → {state['held_prose_after']:.4f}; "
          f"training {sum(state['step_seconds']):.0f} s, held-out evaluation {state['eval_seconds']:.0f} s", flush=True)


# --------------------------------------------------------------------------- code tokens
def common_identifiers(texts: list[str], n: int = 200) -> set[str]:
    c: Counter[str] = Counter()
    for t in texts[:300]:
        c.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", t))
    return {w for w, _ in c.most_common(n)}


def make_code_token(idents: set[str]):
    """A predicate on token texts: Python keywords, builtins, ``self``/``cls``/``args``/``kwargs``,
    the code corpus's 200 most common identifiers, operators, brackets, indentation."""
    words = set(keyword.kwlist) | set(dir(builtins)) | {"self", "cls", "args", "kwargs", "def", "init"} | idents

    def code_token(s: str) -> bool:
        t = s.strip()
        if s and not t and (" " in s or "\n" in s or "\t" in s):
            return True  # indentation / newlines
        if t in _OPS or (t and all(ch in "()[]{}:=.,*@#%<>+-/_'\"\\|&~!" for ch in t)):
            return True
        return t.lstrip("_") in words or t in words

    return code_token


# --------------------------------------------------------------------------- analysis
def fisher_one_sided(k1: int, n1: int, k2: int, n2: int) -> float:
    """P(X >= k1) for X hypergeometric: k1 of n1 vs k2 of n2 (one-sided Fisher exact test)."""
    K, N = k1 + k2, n1 + n2

    def pmf(x: int) -> float:
        return math.comb(K, x) * math.comb(N - K, n1 - x) / math.comb(N, n1)

    return float(sum(pmf(x) for x in range(k1, min(K, n1) + 1)))


def path_scores(model, path: str, rows: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(centred logit ``[r, V]``, PMI ``[r, V]``) of ``path`` on input ``rows``; self-pairs −inf.

    centred: z(b|a) − mean_b z(b|a); PMI: log P(b|a) − log mean_{a' in rows} P(b|a') with P the
    self-excluded softmax.
    """
    from jetex.ngrams.paths import parse_path

    p = parse_path(model, path)[0]
    cen, lps = [], []
    with torch.no_grad():
        for s in range(0, rows.numel(), batch):
            ids = rows[s : s + batch]
            z = p.logits(model, ids.to(model.device), 0).float().cpu()
            c = z - z.mean(-1, keepdim=True)
            r = torch.arange(len(ids))
            z[r, ids] = float("-inf")
            c[r, ids] = float("-inf")
            cen.append(c)
            lps.append(torch.log_softmax(z, -1))
    lp = torch.cat(lps)
    log_mean = torch.logsumexp(lp, 0) - math.log(lp.shape[0])
    return torch.cat(cen), lp - log_mean


def top_gains(base: torch.Tensor, tuned: torch.Tensor, rows: torch.Tensor, n: int) -> list[tuple[int, int, float]]:
    """The ``n`` pairs (a, b, gain) with the largest tuned − base score (self-pairs excluded)."""
    g = tuned - base
    g[torch.isnan(g)] = float("-inf")
    v, i = torch.topk(g.flatten(), n)
    V = g.shape[1]
    return [(int(rows[k // V]), int(k % V), float(x)) for x, k in zip(v, i.tolist())]


def analyse(args) -> None:
    import jetex

    base = jetex.load(MODEL)
    tok = base.tokenizer
    states, tuned = {}, {}
    for run in ("code", "prose"):
        st = json.loads((args.out / run / "state.json").read_text())
        states[run] = st
        folder = args.out / run / "model"
        if not (folder / "tokenizer_config.json").is_file():
            tok.save_pretrained(folder)
        tuned[run] = jetex.load(str(folder))
        if tuned[run].tokenizer_fingerprint() != base.tokenizer_fingerprint():
            raise SystemExit(f"the {run} run's tokenizer differs from the base model's")
    if states["code"]["step"] != states["prose"]["step"]:
        print(f"warning: the runs stopped at different steps ({states['code']['step']} vs {states['prose']['step']})")
    ctexts = code_texts()
    code_token = make_code_token(common_identifiers(ctexts))
    V = base.vocab_size
    strings = base.token_strings(list(range(V)))
    is_code = torch.tensor([code_token(s) for s in strings])
    # input rows: the most frequent tokens of the two training corpora, half from each
    counts = []
    for texts in (ctexts, prose_texts()):
        c = torch.zeros(V, dtype=torch.long)
        n = 0
        for t in texts[int(len(texts) * 0.1):]:
            ids = tok(t, add_special_tokens=False)["input_ids"]
            c += torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=V)
            n += len(ids)
            if n > args.n_train * args.seq:
                break
        counts.append(c)
    chosen: list[int] = []
    seen: set[int] = set()
    for c in counts:
        n_added = 0
        for i in torch.argsort(c, descending=True, stable=True).tolist():
            if c[i] == 0 or n_added >= args.rows // 2:
                break
            if i not in seen:
                seen.add(i)
                chosen.append(i)
                n_added += 1
    rows = torch.tensor(sorted(chosen))
    report: dict = {"rows": len(chosen), "code_tokens": int(is_code.sum()), "vocab": V, "runs": {}, "paths": {},
                    "code_rows": int(is_code[rows].sum()),
                    "chance_code_pair_share": float(is_code[rows].sum()) * float(is_code.sum()) / (len(chosen) * V)}
    for run, st in states.items():
        report["runs"][run] = {k: st.get(k) for k in ("step", "held_code_before", "held_code_after",
                                                          "held_prose_before", "held_prose_after")}
        report["runs"][run]["train_seconds"] = sum(st["step_seconds"])
        report["runs"][run]["config"] = st["config"]
    for path in args.paths:
        t0 = time.perf_counter()
        b_c, b_p = path_scores(base, path, rows)
        out = {}
        for run in ("code", "prose"):
            t_c, t_p = path_scores(tuned[run], path, rows)
            for score, (b, t) in {"pmi": (b_p, t_p), "centred": (b_c, t_c)}.items():
                top = top_gains(b, t, rows, 1000)
                codes = [bool(is_code[a] and is_code[b_]) for a, b_, _ in top]
                out.setdefault(score, {})[run] = {
                    "top50_code": sum(codes[:50]), "top1000_code": sum(codes),
                    "top": [(strings[a], strings[b_], g) for a, b_, g in top[:50]],
                }
        for score, d in out.items():
            for n, key in ((50, "top50_code"), (1000, "top1000_code")):
                d[f"fisher_p_top{n}"] = fisher_one_sided(d["code"][key], n, d["prose"][key], n)
        out["seconds"] = time.perf_counter() - t0
        report["paths"][path] = out
        print(f"{path}: PMI top-50 code pairs {out['pmi']['code']['top50_code']} (code run) vs "
              f"{out['pmi']['prose']['top50_code']} (control), p = {out['pmi']['fisher_p_top50']:.3g}; "
              f"centred {out['centred']['code']['top50_code']} vs {out['centred']['prose']['top50_code']}; "
              f"{out['seconds']:.0f} s", flush=True)
    args.figures.mkdir(parents=True, exist_ok=True)
    _save_atomic_json(args.figures / "finetune_code_diff.json", report)
    write_markdown(report, args.figures / "finetune_code_diff.md")


def _md(s: str) -> str:
    return repr(s)[1:-1].replace("|", "\\|").replace("`", "'")


def write_markdown(rep: dict, path: Path) -> None:
    L = ["# Whole-model fine-tuning of SmolLM2 on code vs prose, read through jet bigram diffs", "",
         "(written by examples/finetune_code_diff.py --analyse)", ""]
    L += ["| run | steps | held-out code loss | held-out prose loss | training s |", "|---|---:|---|---|---:|"]
    for run, r in rep["runs"].items():
        L.append(f"| {run} | {r['step']} | {r['held_code_before']:.4f} → {r['held_code_after']:.4f} | "
                 f"{r['held_prose_before']:.4f} → {r['held_prose_after']:.4f} | {r['train_seconds']:.0f} |")
    L += ["", f"Input rows: {rep['rows']} ({rep['code_rows']} of them code tokens); code tokens: {rep['code_tokens']} of "
          f"{rep['vocab']}; share of code-related pairs among all row × vocabulary pairs (chance level): "
          f"{100 * rep['chance_code_pair_share']:.2f} %.", ""]
    for p, out in rep["paths"].items():
        L += [f"## `{p}` ({out['seconds']:.0f} s)", "",
              "| score | code pairs in top-50 gains: code run / control | one-sided Fisher p | top-1000: code / control | p |",
              "|---|---|---:|---|---:|"]
        for score in ("pmi", "centred"):
            d = out[score]
            L.append(f"| {score} | {d['code']['top50_code']} / {d['prose']['top50_code']} | {d['fisher_p_top50']:.3g} | "
                     f"{d['code']['top1000_code']} / {d['prose']['top1000_code']} | {d['fisher_p_top1000']:.3g} |")
        for score in ("pmi", "centred"):
            for run in ("code", "prose"):
                L += ["", f"Largest {score} gains, {run} run (first 20):", "",
                      ", ".join(f"`{_md(a)}`→`{_md(b)}` {g:+.2f}" for a, b, g in out[score][run]["top"][:20])]
        L.append("")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(L) + "\n")
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", choices=["code", "prose"], help="train this run (resumes from its checkpoint)")
    ap.add_argument("--analyse", action="store_true", help="diff base vs both runs and apply the criterion")
    ap.add_argument("--out", type=Path, default=Path("/work/ft/finetune-code"),
                    help="checkpoints (outside git): <out>/code/, <out>/prose/")
    ap.add_argument("--figures", type=Path, default=HERE / "figures")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--n-train", type=int, default=512, help="training sequences per corpus")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=0, help="linear learning-rate warm-up steps (0: none)")
    ap.add_argument("--ckpt-every", type=int, default=5)
    ap.add_argument("--eval-every", type=int, default=5, help="held-out code loss every N steps (0: only at the end)")
    ap.add_argument("--target", type=float, default=0.3,
                    help="stop once the held-out code loss has dropped by this many nats (checked every --eval-every)")
    ap.add_argument("--stop-at", type=float, default=None, help="stop (and checkpoint) after this many seconds")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, default=2048, help="input tokens of the diff (half code, half prose)")
    ap.add_argument("--paths", nargs="+", default=["direct"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.run:
        train(args)
    if args.analyse:
        analyse(args)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

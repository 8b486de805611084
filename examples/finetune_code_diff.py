"""Whole-model fine-tuning on Python code vs a prose control, read through jet bigram diffs
(paper Sec. 5.3, Table 5), with a criterion fixed before the runs.

The paper diffs the jet bigrams of Llama-2-7B and CodeLlama and finds coding bigrams
(``**kwargs``, getters) among those that rise. This script runs a controlled miniature:

1. **Model**: SmolLM2-135M-Instruct (``jetex.load('smollm2-135m')``), ALL parameters trained
   (tied embedding/unembedding included), through the Hugging Face module's own forward pass.
2. **Data every machine has**: code = the Python standard library's ``.py`` files
   (:func:`jetex.apps.corpus.stdlib_sources`, files over 40 kB skipped, shuffled with a fixed
   seed; the first 10 % of the files are held out: ``--n-held`` windows evenly spaced over them); prose = the sentences of the standard
   library's docstrings (:func:`jetex.apps.corpus.sentences`, ``>>>`` examples dropped; the
   first 10 % of the docstrings held out). Both are cut into ``--seq`` token sequences; the
   code run and the prose **control run** see the same number of sequences, the same batch
   size, learning rate, number of steps and batch order.
3. **Training**: AdamW (lr with a linear warm-up over ``--warmup`` steps, then constant;
   gradient clipping at 1.0), up to ``--steps`` steps of ``--batch`` sequences. The held-out
   code loss is measured every ``--eval-every`` steps; the run stops once it has dropped by
   ``--target`` nats (0: never), after ``--steps``, or after ``--stop-at`` seconds. Each run
   checkpoints every ``--ckpt-every`` steps to ``--out/<run>/`` (weights and tokenizer as a
   Hugging Face folder, optimizer moments as safetensors, step/losses/curve as JSON written
   last; no pickle) and resumes from there when restarted. ``--device cuda`` runs on a GPU
   (not tested here: the machine that ran it has none).
4. **Stores and diffs** (``--analyse``): ``jetex ngrams extract`` builds one store per model
   (base, code-tuned, prose-tuned) for ``--paths`` (default ``direct`` and ``mlp:0``) on input
   tokens 0..``--rows``−1 (``--limit-vocab``), outputs over the whole vocabulary, score
   ``zlogit`` (the pre-registered one, :data:`SCORE`, whatever the CLI's default); then
   ``jetex diff base.duckdb <run>.duckdb --top 1000 --changes 50 --json --score zlogit``.
5. **Pre-registered criterion** (docs/applications.md, committed before the diffs): a pair is
   code-related when both tokens are code tokens (:func:`make_code_token`). Primary: the
   number of code-related pairs among the top-50 rank gainers (``gained``) of the paths
   pooled, code run vs control run; *detected* when the code run has more and a one-sided
   Fisher exact test on the 2×2 table gives p < 0.05. Secondary: each path alone, and the
   first 50 bigrams that entered the tuned model's top-1000.

Results go to ``examples/figures/finetune_code_diff.md`` and ``.json``.

Usage::

    python examples/finetune_code_diff.py --run code  &   # the two trainings (resumable)
    python examples/finetune_code_diff.py --run prose --target 0 --steps <the code run's steps> &
    python examples/finetune_code_diff.py --analyse       # stores, diffs, criterion

    python examples/finetune_code_diff.py --device cuda --run code --steps 2000 --batch 16 --seq 256   # a GPU run

Runtime on the shared 2-core machine (2026-12-02): see docs/applications.md.
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
#: the score fixed by the pre-registered criterion (docs/applications.md), whatever the CLI's default
SCORE = "zlogit"

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


def split_sequences(tokenizer, texts: list[str], n: int, seq: int, n_held: int = 64, held_frac: float = 0.1
                    ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(train ``[n, seq]``, held-out ``[n_held, seq]``, n_held): the first ``held_frac`` of the
    texts give the held-out sequences, the rest the training ones. Training sequences are cut
    from the start of the training texts; the held-out sequences are ``n_held`` windows evenly
    spaced over *all* held-out texts (so that the held-out loss is not the loss of one or two
    files)."""
    k = max(1, int(len(texts) * held_frac))

    def tokens(ts: list[str], limit: int | None) -> list[int]:
        ids: list[int] = []
        for t in ts:
            ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
            ids.append(tokenizer.eos_token_id)
            if limit is not None and len(ids) >= limit:
                break
        return ids

    ids = tokens(texts[k:], n * seq)
    m = min(n, len(ids) // seq)
    train = torch.tensor(ids[: m * seq], dtype=torch.long).reshape(m, seq)
    hid = tokens(texts[:k], None)
    nw = len(hid) // seq
    if nw < 1:
        raise SystemExit(f"the held-out texts give no sequence of {seq} tokens")
    pick = sorted({int(i * nw / min(n_held, nw)) for i in range(min(n_held, nw))})
    held = torch.tensor([hid[j * seq:(j + 1) * seq] for j in pick], dtype=torch.long)
    if train.shape[0] < n:
        raise SystemExit(f"the corpus gives only {train.shape[0]} training sequences of {seq} tokens, {n} asked")
    return train, held, held.shape[0]


def data(tokenizer, run: str, n: int, seq: int, n_held: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train ids of ``run``, held-out code ids, held-out prose ids)."""
    ctr, cheld, _ = split_sequences(tokenizer, code_texts(), n, seq, n_held)
    ptr, pheld, _ = split_sequences(tokenizer, prose_texts(), n, seq, n_held)
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
    train_ids, held_code, held_prose = data(tok, args.run, args.n_train, args.seq, args.n_held)
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


def jetex_cli(*argv: str) -> str:
    """Run one ``jetex`` command (this interpreter, this jetex) and return its stdout; a failure
    stops the script with the command's error line."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "jetex.cli.main", *argv]
    print("$ jetex " + " ".join(argv), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"jetex {' '.join(argv[:2])} failed: {r.stderr.strip().splitlines()[-1:]}")
    return r.stdout


def analyse(args) -> None:
    """Stores for base / code / prose (``jetex ngrams extract``), ``jetex diff`` of base vs each
    tuned model per path, and the pre-registered criterion (docs/applications.md)."""
    import jetex

    base = jetex.load(MODEL)
    V = base.vocab_size
    states = {}
    models = {"base": MODEL}
    for run in ("code", "prose"):
        st = json.loads((args.out / run / "state.json").read_text())
        states[run] = st
        folder = args.out / run / "model"
        if not (folder / "tokenizer_config.json").is_file():
            base.tokenizer.save_pretrained(folder)
        models[run] = str(folder)
    if states["code"]["step"] != states["prose"]["step"]:
        print(f"warning: the runs stopped at different steps ({states['code']['step']} vs {states['prose']['step']})")
    code_token = make_code_token(common_identifiers(code_texts()))
    strings = base.token_strings(list(range(V)))
    is_code = [code_token(t) for t in strings]
    stores = args.out / "stores"
    stores.mkdir(parents=True, exist_ok=True)
    timings: dict = {}
    from concurrent.futures import ThreadPoolExecutor

    def timed(label: str, *argv: str) -> str:
        t0 = time.perf_counter()
        out = jetex_cli(*argv)
        timings[label] = time.perf_counter() - t0
        return out

    def extract(name: str) -> None:
        cli = ["ngrams", "extract", "-m", models[name], "--db", str(stores / f"{name}.duckdb"), "--limit-vocab",
               str(args.rows), "--top", "128", "--fidelity-sample", "0", "--precision-sample", "0", "-q", "--score", SCORE]
        for path in args.paths:
            cli += ["--path", path]
        timed(f"extract {name}", *cli)  # resumable: runs already in the store are skipped

    def diff(run: str, path: str) -> dict:
        f = stores / f"diff-{run}-{path.replace(':', '')}.json"
        if f.is_file() and f.stat().st_mtime > max((stores / f"{n}.duckdb").stat().st_mtime for n in ("base", run)):
            return json.loads(f.read_text())  # the diff of these stores is already there
        out = timed(f"diff {run} {path}", "diff", str(stores / "base.duckdb"), str(stores / f"{run}.duckdb"), "--path", path,
                    "--top", "1000", "--changes", "50", "--json", "--score", SCORE)
        tmp = f.with_suffix(".tmp")
        tmp.write_text(out)
        os.replace(tmp, f)
        return json.loads(out)

    with ThreadPoolExecutor(args.jobs) as ex:  # separate processes: the jetex commands run side by side
        list(ex.map(extract, models))
        diffs = dict(zip([(r, p) for p in args.paths for r in ("code", "prose")],
                         ex.map(lambda rp: diff(*rp), [(r, p) for p in args.paths for r in ("code", "prose")])))
    n_in = min(args.rows, V)
    report: dict = {"inputs": n_in, "vocab": V, "code_inputs": sum(is_code[:n_in]), "code_tokens": sum(is_code),
                    "runs": {}, "paths": {}, "timings": timings}
    report["chance_code_pair_share"] = report["code_inputs"] * report["code_tokens"] / (n_in * V)
    for run, st in states.items():
        report["runs"][run] = {k: st.get(k) for k in ("step", "held_code_before", "held_code_after",
                                                          "held_prose_before", "held_prose_after", "curve")}
        report["runs"][run]["train_seconds"] = sum(st["step_seconds"])
        report["runs"][run]["config"] = st["config"]
    pooled = {"code": [0, 0], "prose": [0, 0]}
    for path in args.paths:
        out: dict = {}
        for run in ("code", "prose"):
            d = diffs[(run, path)]
            r = {}
            for key in ("gained", "entered"):
                lst = d[key][:50]
                flags = [bool(is_code[x["a"]] and is_code[x["b"]]) for x in lst]
                r[key] = {"n": len(lst), "code": sum(flags),
                          "pairs": [(x["a_text"], x["b_text"], x["rank_a"], x["rank_b"], f) for x, f in zip(lst, flags)]}
            out[run] = r
            pooled[run][0] += r["gained"]["code"]
            pooled[run][1] += r["gained"]["n"]
        for key in ("gained", "entered"):
            c, p_ = out["code"][key], out["prose"][key]
            out[f"fisher_p_{key}"] = fisher_one_sided(c["code"], c["n"], p_["code"], p_["n"]) if c["n"] and p_["n"] else None
        report["paths"][path] = out
        print(f"{path}: code-related among the top-50 rank gainers: {out['code']['gained']['code']}/"
              f"{out['code']['gained']['n']} (code run) vs {out['prose']['gained']['code']}/{out['prose']['gained']['n']} "
              f"(control); first 50 entered: {out['code']['entered']['code']}/{out['code']['entered']['n']} vs "
              f"{out['prose']['entered']['code']}/{out['prose']['entered']['n']}", flush=True)
    (kc, nc), (kp, np_) = pooled["code"], pooled["prose"]
    p = fisher_one_sided(kc, nc, kp, np_) if nc and np_ else float("nan")
    report["primary"] = {"code": [kc, nc], "prose": [kp, np_], "fisher_p": p, "detected": bool(kc / max(nc, 1) > kp / max(np_, 1) and p < 0.05)}
    print(f"PRIMARY (pooled {', '.join(args.paths)}): {kc}/{nc} code-related (code run) vs {kp}/{np_} (control), "
          f"one-sided Fisher p = {p:.3g}: {'DETECTED' if report['primary']['detected'] else 'not detected'}", flush=True)
    args.figures.mkdir(parents=True, exist_ok=True)
    _save_atomic_json(args.figures / "finetune_code_diff.json", report)
    write_markdown(report, args.figures / "finetune_code_diff.md")


def _md(s: str) -> str:
    return repr(s)[1:-1].replace("|", "\\|").replace("`", "'")


def write_markdown(rep: dict, path: Path) -> None:
    L = ["# Whole-model fine-tuning of SmolLM2 on code vs prose, read through jet bigram diffs", "",
         "(written by examples/finetune_code_diff.py --analyse; criterion in docs/applications.md)", ""]
    L += ["| run | steps | held-out code loss | held-out prose loss | training s |", "|---|---:|---|---|---:|"]
    for run, r in rep["runs"].items():
        L.append(f"| {run} | {r['step']} | {r['held_code_before']:.4f} → {r['held_code_after']:.4f} | "
                 f"{r['held_prose_before']:.4f} → {r['held_prose_after']:.4f} | {r['train_seconds']:.0f} |")
    for run, r in rep["runs"].items():
        L.append("")
        L.append(f"Held-out code loss curve, {run} run: " + ", ".join(f"{s}: {h:.4f}" for s, h in r.get("curve") or []))
    pr = rep["primary"]
    L += ["", f"Inputs: token ids 0..{rep['inputs'] - 1} ({rep['code_inputs']} code tokens); code tokens in the "
          f"vocabulary: {rep['code_tokens']} of {rep['vocab']}; chance share of code-related pairs: "
          f"{100 * rep['chance_code_pair_share']:.2f} %.", "",
          f"**Primary** (top-50 zlogit rank gainers, paths pooled): code run {pr['code'][0]}/{pr['code'][1]}, control "
          f"{pr['prose'][0]}/{pr['prose'][1]}, one-sided Fisher p = {pr['fisher_p']:.3g}: "
          f"{'detected' if pr['detected'] else 'not detected'}.", ""]
    for p, out in rep["paths"].items():
        L += [f"## `{p}`", "", "| list | code run | control | one-sided Fisher p |", "|---|---|---|---:|"]
        for key in ("gained", "entered"):
            fp = out[f"fisher_p_{key}"]
            L.append(f"| {key} (first 50) | {out['code'][key]['code']}/{out['code'][key]['n']} | "
                     f"{out['prose'][key]['code']}/{out['prose'][key]['n']} | {'—' if fp is None else f'{fp:.3g}'} |")
        for key in ("gained", "entered"):
            for run in ("code", "prose"):
                L += ["", f"{key}, {run} run (first 25; rank base → tuned; * code-related):", "",
                      ", ".join(f"`{_md(a)}`→`{_md(b)}` {ra}→{rb}{'*' if f else ''}"
                                for a, b, ra, rb, f in out[run][key]["pairs"][:25])]
        L.append("")
    L += ["Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in rep["timings"].items())]
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
    ap.add_argument("--n-held", type=int, default=64, help="held-out sequences per corpus (evenly spaced windows)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=0, help="linear learning-rate warm-up steps (0: none)")
    ap.add_argument("--ckpt-every", type=int, default=5)
    ap.add_argument("--eval-every", type=int, default=5, help="held-out code loss every N steps (0: only at the end)")
    ap.add_argument("--target", type=float, default=0.3,
                    help="stop once the held-out code loss has dropped by this many nats (checked every --eval-every)")
    ap.add_argument("--stop-at", type=float, default=None, help="stop (and checkpoint) after this many seconds")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, default=8192, help="input tokens of the stores: ids 0..N-1 (--limit-vocab)")
    ap.add_argument("--paths", nargs="+", default=["direct", "mlp:0"])
    ap.add_argument("--jobs", type=int, default=4, help="jetex extract/diff commands run side by side in --analyse")
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

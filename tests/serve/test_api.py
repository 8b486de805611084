"""The explorer's JSON API against a live server on loopback: results equal the library's,
every refusal is a 4xx with one line, one computation per model at a time, a disconnected
client's computation stops, stores stay untouched."""

from __future__ import annotations

import csv
import io
import json
import math
import socket
import threading
import time

import pytest
import torch

from serve_helpers import SlowBlocks, finite, request

TEXT = "the cat sat on the mat ."


def _roundtrip(obj):
    """``obj`` as the API sends it: JSON, with non-finite numbers as null (browsers refuse NaN)."""
    return finite(json.loads(json.dumps(obj)))


def test_lens_result_is_the_library_result(explorer):
    import jetex

    st, out = request(explorer.url, "POST", "/api/lens", {"text": TEXT, "order": 1, "top": 5})
    assert st == 200, out
    assert out["result"] == _roundtrip(jetex.iterative_lens(explorer.tiny, TEXT, order=1, top_k=5).to_dict())
    st, out = request(explorer.url, "POST", "/api/lens",
                      {"model": "tiny", "text": TEXT, "kind": "joint", "order": 2, "centres": "blocks", "optimize": True, "top": 3})
    assert st == 200, out
    ref = jetex.joint_lens(explorer.tiny, TEXT, order=2, centres="blocks", optimize=True, top_k=3).to_dict()
    assert out["result"] == _roundtrip(ref)


def test_block_and_stream_names_everywhere(explorer):
    """Blocks and streams are chosen by name (emb, attn.N, mlp.N, final) or layer number in every
    parameter that selects one, with the library's meaning (jetex.models.naming)."""
    import jetex

    m = explorer.tiny
    assert m.block_names == ["attn.0", "mlp.0", "attn.1", "mlp.1"]
    for layers in (["emb", "attn.0", "mlp.1"], "emb, attn.0, mlp.1", ["emb", "attn.0", 1]):
        st, out = request(explorer.url, "POST", "/api/lens", {"model": "tiny", "text": TEXT, "layers": layers, "top": 3})
        assert st == 200, out
        assert out["result"] == _roundtrip(jetex.iterative_lens(m, TEXT, layers=["emb", "attn.0", "mlp.1"], top_k=3).to_dict())
        assert out["result"]["rows"] == ["emb", "attn.0", "mlp.1"]
    st, out = request(explorer.url, "POST", "/api/lens", {"text": TEXT, "layers": "-1-1", "top": 3})
    assert st == 200 and out["result"]["rows"] == ["emb", "mlp.0", "mlp.1"], out  # a range of layer numbers
    for centres in ("mlp.0,mlp.1", ["mlp.0", "final"], [0, 1]):
        st, out = request(explorer.url, "POST", "/api/lens", {"text": TEXT, "kind": "joint", "centres": centres, "top": 3})
        assert st == 200, out
        assert out["result"] == _roundtrip(jetex.joint_lens(m, TEXT, centres=[2, 4], top_k=3).to_dict())
    st, out = request(explorer.url, "POST", "/api/paths", {"text": TEXT, "max_len": 2, "use": "mlp.0", "avoid": ["attn.1"], "top": 50})
    assert st == 200, out
    pe = jetex.exp_jet_expansion(m, 1)
    want = {p.name(m) for p in pe.paths(jetex.PathFilter(must_use=(2,), avoid=(3,), max_len=2))}
    assert {p["path"] for p in out["paths"]} == want and out["n_paths"] == len(want)
    ref = jetex.attribute(m, TEXT, method="jetxlogit", layer=2, order=1).scores.tolist()
    for layer in ("mlp.0", 0, "0"):  # a layer number is the stream at the layer's end, as `jetex attribute --layer`
        st, out = request(explorer.url, "POST", "/api/attribute", {"text": TEXT, "method": "jetxlogit", "layer": layer, "candidates": 0})
        assert st == 200 and out["attribution"]["scores"] == pytest.approx(ref, abs=1e-6), out
    for ep, body, frag in [
        ("/api/lens", {"text": TEXT, "layers": ["mlp.7"]}, "unknown layers entry 'mlp.7'"),
        ("/api/lens", {"text": TEXT, "layers": [True]}, "must be a list of names or numbers"),
        ("/api/lens", {"text": TEXT, "kind": "joint", "centres": "mlp.0"}, "end the boundaries at L = 4"),
        ("/api/attribute", {"text": TEXT, "method": "jetxlogit", "layer": "attn.5"}, "unknown layer 'attn.5'"),
    ]:
        st, out = request(explorer.url, "POST", ep, body)
        assert st == 400 and frag in out["error"], (body, out)


def test_lens_view_probabilities_and_ranks(explorer):
    """Order 0 is the logit lens: row l's log-probabilities are log_softmax(decode(h_l)), computed
    here independently; the rank of the model's top-1 token is counted by brute force."""
    m = explorer.tiny
    st, out = request(explorer.url, "POST", "/api/lens", {"text": TEXT, "order": 0, "top": 4})
    assert st == 200, out
    ids = m.tokenize(TEXT)
    with torch.no_grad():
        h = m.stream(ids)
        model_lp = m.decode(h[-1])[0].double().log_softmax(-1)
    rows = out["result"]["rows"]
    streams = [0] + [i + 1 for i, b in enumerate(m.blocks) if i + 1 == len(m.blocks) or m.blocks[i + 1].layer != b.layer]
    assert len(streams) == len(rows)
    V = out["view"]
    for r, l in enumerate(streams):
        with torch.no_grad():
            lg = m.decode(h[l])[0].double()
        lp = lg.log_softmax(-1)
        for i in range(ids.shape[-1]):
            want = lp[i].topk(4).values.tolist()
            assert V["logprobs"][r][i] == pytest.approx(want, abs=2e-4)
            top1 = int(model_lp[i].argmax())
            assert V["model_token_rank"][r][i] == int((lg[i] > lg[i, top1]).sum()) + 1
            assert V["model_token_logprob"][r][i] == pytest.approx(float(lp[i, top1]), abs=2e-4)
    # the last stream's lens is the model itself: rank 1 everywhere, same probabilities
    assert all(rk == 1 for rk in V["model_token_rank"][-1])
    for i, cell in enumerate(V["model"]):
        assert cell["logprobs"] == pytest.approx(model_lp[i].topk(4).values.tolist(), abs=2e-4)
        assert math.isclose(sum(math.exp(x) for x in V["logprobs"][-1][i]), sum(math.exp(x) for x in cell["logprobs"]), abs_tol=1e-3)


def test_paths_attribute_predict_equal_the_library(explorer):
    import jetex
    from jetex.cli.cmd_models import predict_payload

    m = explorer.tiny
    st, out = request(explorer.url, "POST", "/api/paths", {"text": TEXT, "order": 1, "max_len": 2, "top": 5, "position": 3})
    assert st == 200, out
    pe = jetex.exp_jet_expansion(m, 1)
    ref = pe.rank(m.tokenize(TEXT), list(pe.paths(jetex.PathFilter(max_len=2))), position=3, top=5)
    assert [p["path"] for p in out["paths"]] == [r.name for r in ref]
    assert [p["logit"] for p in out["paths"]] == pytest.approx([r.logit for r in ref], abs=1e-6)
    assert out["n_paths"] == pe.count(jetex.PathFilter(max_len=2))

    st, out = request(explorer.url, "POST", "/api/attribute", {"text": TEXT, "method": "normxlogit", "faithfulness": True})
    assert st == 200, out
    ref = jetex.attribute(m, TEXT, method="normxlogit")
    assert out["attribution"]["scores"] == pytest.approx(ref.scores.tolist(), abs=1e-6)
    assert out["attribution"]["target_id"] == ref.target_id == out["candidates"][0]["id"]
    assert set(out["faithfulness"]) >= {"comprehensiveness", "sufficiency", "aopc_comprehensiveness"}
    st, out2 = request(explorer.url, "POST", "/api/attribute", {"text": TEXT, "target_id": out["candidates"][1]["id"]})
    assert st == 200 and out2["attribution"]["target_id"] == out["candidates"][1]["id"]

    st, out = request(explorer.url, "POST", "/api/predict", {"text": TEXT, "top": 3})
    assert st == 200
    out.pop("timing")
    assert out == _roundtrip(predict_payload(m, TEXT, 3))


BAD = [
    ("/api/lens", {"text": ""}, 400, "empty text"),
    ("/api/lens", {"text": "   \n "}, 400, "empty text"),
    ("/api/lens", {"text": "the " * 600}, 400, "characters long; the limit is 2000"),
    ("/api/lens", {"text": "the " * 70}, 400, "tokens long"),
    ("/api/lens", {"text": "the\x00cat"}, 400, "control character U+0000"),
    ("/api/lens", {"text": "the\x1bcat"}, 400, "control character U+001B"),
    ("/api/lens", {"text": "the cat", "model": "gpt-17"}, 404, "unknown model 'gpt-17'"),
    ("/api/lens", {"text": "the cat", "order": 99}, 400, "'order' = 99 is out of range 0..4"),
    ("/api/lens", {"text": "the cat", "order": -1}, 400, "out of range"),
    ("/api/lens", {"text": "the cat", "order": "two"}, 400, "must be an integer"),
    ("/api/lens", {"text": "the cat", "top": 10_000}, 400, "'top' = 10000 is out of range"),
    ("/api/lens", {"text": "the cat", "kind": "sideways"}, 400, "unknown kind 'sideways'"),
    ("/api/lens", {"text": "the cat", "layers": [7]}, 400, "out of range"),
    ("/api/lens", {"text": "the cat", "kind": "joint", "centres": "rows"}, 400, "unknown centres"),
    ("/api/lens", {"text": "the cat", "optimize": True}, 400, "joint lens only"),
    ("/api/lens", {"text": "the cat", "colour": "red"}, 400, "unknown field 'colour'"),
    ("/api/lens", ["the cat"], 400, "must be a JSON object"),
    ("/api/paths", {"text": "the cat", "use": "mlp.9"}, 400, "unknown block 'mlp.9'"),
    ("/api/paths", {"text": "the cat", "avoid": ["bogus"]}, 400, "unknown block 'bogus'"),
    ("/api/paths", {"text": "the cat", "position": 40}, 400, "position 40 out of range"),
    ("/api/paths", {"text": "the cat", "token": "the cat"}, 400, "is 2 tokens"),
    ("/api/paths", {"text": "the cat", "degrees": [0]}, 400, "split_degrees"),
    ("/api/paths", {"text": "the cat", "use": "mlp.0", "avoid": "mlp"}, 400, "both required and avoided"),
    ("/api/attribute", {"text": "the cat", "method": "telepathy"}, 400, "unknown method 'telepathy'"),
    ("/api/attribute", {"text": "the cat", "method": "jetxlogit"}, 400, "needs a layer"),
    ("/api/attribute", {"text": "the cat", "target": "x", "target_id": 3}, 400, "either 'target' or 'target_id'"),
    ("/api/predict", {"top": 3}, 400, "missing 'text'"),
]


@pytest.mark.parametrize("path, body, status, fragment", BAD, ids=[f"{p}:{f}" for p, _, _, f in BAD])
def test_refusals_are_one_line_4xx(explorer, path, body, status, fragment):
    st, out = request(explorer.url, "POST", path, body)
    assert st == status, out
    assert fragment in out["error"] and "\n" not in out["error"]


RAW = [
    (b"{not json", 400, "malformed JSON"),
    (b"", 400, "empty request body"),
    (b'{"text": "caf\xe9"}', 400, "not UTF-8"),
    (b'{"text": "a\\ud800b"}', 400, "lone surrogate"),
    (b'{"text": "' + b"a" * 70_000 + b'"}', 413, "the limit is 65536"),
]


@pytest.mark.parametrize("raw, status, fragment", RAW, ids=[f for _, _, f in RAW])
def test_refused_bodies(explorer, raw, status, fragment):
    st, out = request(explorer.url, "POST", "/api/lens", raw=raw)
    assert st == status and fragment in out["error"], out


def test_routing_refusals_and_host_check(explorer):
    st, out = request(explorer.url, "GET", "/api/lens")
    assert st == 405 and "not allowed" in out["error"]
    st, out = request(explorer.url, "GET", "/api/nothing")
    assert st == 404 and "no endpoint" in out["error"]
    st, out = request(explorer.url, "GET", "/etc/passwd")
    assert st == 404
    st, out = request(explorer.url, "GET", "/static/../../../etc/passwd")
    assert st == 404
    st, _ = request(explorer.url, "GET", "/api/status", headers={"host": "evil.example:80"})
    assert st == 400  # a DNS-rebinding page cannot talk to the loopback server
    for page in ("/lens", "/paths", "/attribution", "/ngrams"):
        st, html = request(explorer.url, "GET", page)
        assert st == 200 and "jetex explorer" in html
    st, out = request(explorer.url, "GET", "/api")
    assert st == 200 and {e["path"] for e in out["endpoints"]} >= {"/api/lens", "/api/paths", "/api/attribute", "/api/ngrams/top"}


def test_ngrams_listing_search_export_and_diff(explorer, serve_files):
    from jetex.apps.diff import diff_bigrams
    from jetex.apps.tables import table_from_store
    from jetex.ngrams.store import NgramStore

    st, status = request(explorer.url, "GET", "/api/status")
    assert [s["name"] for s in status["stores"]] == ["store_a", "store_b"]
    from jetex.ngrams.scores import DEFAULT_SCORE

    with NgramStore(serve_files["store_a"], read_only=True) as s:
        run = [r for r in s.runs(status="done") if r["path"] == "direct"][-1]
        rid, own = run["run_id"], s.run_score(run)
        own_top = s.top_pairs(rid, 7)
        zrun = [r for r in s.runs(status="done") if r["path"] == "mlp:1"][-1]
        zrid = zrun["run_id"]
        refs = {sc: s.top_pairs(zrid, 7, score=sc) for sc in ("logprob", "logit", "zlogit")}
        tid = s.find_tokens("cat")[0][0]
        as_output = s.ranked(zrid, "prob", output_id=tid, n=50)
        as_input = s.ngrams(rid, input_id=tid)
    # default: the run's own score (the store's default), its values in the column "score"
    assert own == DEFAULT_SCORE and s.run_score(zrun) == "zlogit"
    st, out = request(explorer.url, "GET", "/api/ngrams/top?store=store_a&path=direct&n=7")
    assert st == 200, out
    assert out["score"] == out["default_score"] == own and "score" in out["columns"]
    assert [(r["input_id"], r["output_id"]) for r in out["rows"]] == [(r["input_id"], r["output_id"]) for r in own_top]
    assert [r["score"] for r in out["rows"]] == pytest.approx([r["score"] for r in own_top], abs=1e-5)
    for sc, ref in refs.items():  # every score of the same row order, as `jetex ngrams top --score`
        st, out = request(explorer.url, "GET", f"/api/ngrams/top?store=store_a&path=mlp:1&score={sc}&n=7")
        assert st == 200 and out["score"] == sc and out["default_score"] == "zlogit", out
        assert [(r["input_id"], r["output_id"]) for r in out["rows"]] == [(r["input_id"], r["output_id"]) for r in ref]
        assert [r["score"] for r in out["rows"]] == pytest.approx([r["score"] for r in ref], abs=1e-5)
    # a token's rows: logprob is the stored log-probability itself; the listing is ranked by the score
    st, out = request(explorer.url, "GET", "/api/ngrams/top?store=store_a&path=mlp:1&token=cat&side=output&n=50&score=logprob")
    assert st == 200 and out["rows"] and all(r["output"] == "cat" for r in out["rows"])
    assert {(r["input_id"]) for r in out["rows"]} == {r["input_id"] for r in as_output}
    assert [r["score"] for r in out["rows"]] == pytest.approx([r["logprob"] for r in out["rows"]], abs=1e-5)
    st, out = request(explorer.url, "GET", "/api/ngrams/top?store=store_a&path=direct&token=cat&side=input&n=50")
    assert st == 200 and {r["output_id"] for r in out["rows"]} == {r["output_id"] for r in as_input}
    assert out["score"] == own and [r["score"] for r in out["rows"]] == sorted((r["score"] for r in out["rows"]), reverse=True)
    # the zpmi values of the token's rows, read from the stored lse_ζ and log q_ζ, are the ranked ones
    by_pair = {(r["input_id"], r["output_id"]): r["score"] for r in own_top}
    st, out = request(explorer.url, "GET", f"/api/ngrams/top?store=store_a&path=direct&token=%23{own_top[0]['input_id']}"
                      "&side=input&n=8")
    assert st == 200 and out["rows"][0]["score"] == pytest.approx(by_pair[(own_top[0]["input_id"], out["rows"][0]["output_id"])],
                                                                  abs=1e-5)
    for path, sc in (("direct", "pmi"), ("direct", "zlogit"), ("mlp:1", "pmi"), ("mlp:1", "zpmi")):
        st, out = request(explorer.url, "GET", f"/api/ngrams/top?store=store_a&path={path}&n=5&score={sc}")
        assert st == 409 and "orders them differently" in out["error"], out  # pmi / zpmi need their own extraction
    st, text = request(explorer.url, "GET", "/api/ngrams/top?store=store_a&n=5&format=csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert st == 200 and len(rows) == 5 and set(rows[0]) >= {"input", "output", "score", "prob"}
    st, out = request(explorer.url, "GET", "/api/ngrams/diff?a=store_a&b=store_b&top=30&step=5")
    assert st == 200, out
    ref = diff_bigrams(table_from_store(serve_files["store_a"]), table_from_store(serve_files["store_b"]), top=30, step=5).to_dict()
    assert out["side_by_side"] == _roundtrip(ref["side_by_side"]) and not out["identical"]
    # refusals
    for q, status_, frag in [
        ("store=nope", 404, "unknown store 'nope'"),
        ("store=store_a&score=vibes", 400, "unknown score 'vibes'"),
        ("store=store_a&path=mlp:9", 404, "no finished run of path 'mlp:9'"),
        ("store=store_a&n=100000", 400, "out of range"),
        ("store=store_a&token=zebra", 404, "not in the vocabulary"),
        ("store=store_a&file=/etc/passwd", 400, "unknown parameter 'file'"),
        ("store=store_b&model=tiny", 409, "holds n-grams of model"),
        ("store=store_a&score=attn_prob", 400, "trigram"),
    ]:
        st, out = request(explorer.url, "GET", "/api/ngrams/top?" + q)
        assert st == status_ and frag in out["error"], (q, out)
    st, out = request(explorer.url, "GET", "/api/ngrams/top?store=store_a&model=tiny&n=3")
    assert st == 200  # the store of the model itself


def _hold(explorer, body, seconds):
    """Send a request on a raw socket, keep the connection open ``seconds`` s, then close it."""
    host, port = explorer.url.split("//")[1].rsplit(":", 1)
    data = json.dumps(body).encode()
    s = socket.create_connection((host, int(port)))
    s.sendall(b"POST /api/lens HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    time.sleep(seconds)
    s.close()


def _wait(cond, timeout=30.0):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.02)
    return True


def test_disconnected_client_stops_its_computation(explorer):
    ex = explorer.app.state.explorer
    hooks = explorer.slow_hooks
    body = {"model": "slow", "text": TEXT, "order": 1}
    c0 = hooks.calls
    st, _ = request(explorer.url, "POST", "/api/lens", body)
    assert st == 200
    full = hooks.calls - c0  # block calls of one complete lens request
    assert full == explorer.slow.n_blocks  # one forward pass per lens request (the view reads the lens's result)
    cancelled0 = ex.counters.cancelled
    c1 = hooks.calls
    _hold(explorer, body, 0.2)  # ~2 block calls of 0.15 s, then the client goes away
    assert _wait(lambda: ex.counters.cancelled == cancelled0 + 1), ex.counters
    assert _wait(lambda: "slow" not in ex.counters.running)
    done = hooks.calls - c1
    assert done <= full - 1, (done, full)  # stopped early, not run to the end
    time.sleep(0.4)
    assert hooks.calls - c1 == done  # and nothing more runs afterwards
    st, _ = request(explorer.url, "POST", "/api/lens", {"model": "slow", "text": "the cat", "order": 0})
    assert st == 200  # the server keeps serving


def test_one_computation_per_model_and_a_bounded_queue(serve_files):
    import jetex
    from jetex.serve.app import create_app, start_in_thread
    from jetex.serve.limits import Limits

    slow = jetex.load(serve_files["a_dir"])
    hooks = SlowBlocks(slow, 0.02)
    srv = start_in_thread(create_app({"slow": slow}, [], Limits(max_queue=3)))
    try:
        results: list[tuple[int, dict]] = []

        def go():
            results.append(request(srv.url, "POST", "/api/lens", {"text": TEXT, "order": 1, "top": 3}))

        threads = [threading.Thread(target=go) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        codes = sorted(c for c, _ in results)
        assert len(results) == 6 and set(codes) <= {200, 429} and 200 in codes and 429 in codes, codes
        assert codes.count(200) >= 3
        assert all("busy" in out["error"] for c, out in results if c == 429)
        assert hooks.max_inside == 1  # never two computations inside the model at once
        oks = [out["result"] for c, out in results if c == 200]
        assert all(r == oks[0] for r in oks)
        st, status = request(srv.url, "GET", "/api/status")
        assert status["counters"]["refused_busy"] == codes.count(429) and status["queued"] == {"slow": 0}
    finally:
        srv.stop()

// jetex explorer: one page per view, each a client of the JSON API (docs/serve.md).
// Token strings are only ever inserted with textContent (never as HTML).
(function () {
  'use strict';
  var $ = function (id) { return document.getElementById(id); };
  var STATUS = null;           // GET /api/status
  var inflight = {};           // page -> AbortController of its running request
  var LENS = null;             // last lens response

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  function vis(s) { return String(s).replace(/ /g, '\u2423').replace(/\n/g, '\u23ce').replace(/\t/g, '\u21e5'); }
  function fmt(x, d) { return (x === null || x === undefined) ? 'n/a' : (x >= 0 ? '+' : '') + x.toFixed(d === undefined ? 3 : d); }
  function pct(p) { return (p === null || p === undefined) ? 'n/a' : (p * 100).toFixed(p >= 0.1 ? 1 : 2) + '%'; }
  function showError(msg) { var e = $('error'); e.textContent = msg; e.hidden = !msg; }
  function busy(on) { $('busy').hidden = !on; }

  // ---- requests -------------------------------------------------------------------------
  function api(page, method, url, body) {
    if (inflight[page]) inflight[page].abort();   // a new request cancels the page's previous one
    var ctl = new AbortController();
    inflight[page] = ctl;
    var opts = { method: method, signal: ctl.signal, headers: {} };
    if (body !== undefined) { opts.headers['content-type'] = 'application/json'; opts.body = JSON.stringify(body); }
    showError('');
    busy(true);
    return fetch(url, opts).then(function (r) {
      return r.text().then(function (t) {
        var data; try { data = JSON.parse(t); } catch (e) { data = { error: t || ('HTTP ' + r.status) }; }
        if (!r.ok) { var err = new Error(data.error || ('HTTP ' + r.status)); err.status = r.status; throw err; }
        return data;
      });
    }).finally(function () { if (inflight[page] === ctl) { inflight[page] = null; busy(false); } })
      .catch(function (e) {
        if (e.name === 'AbortError') throw e;
        showError(e.message); throw e;
      });
  }
  function model() { return $('model').value; }
  function text() { return $('text').value; }
  function intOrNull(v) { return v === '' ? null : parseInt(v, 10); }

  // ---- navigation -----------------------------------------------------------------------
  var PAGES = ['lens', 'paths', 'attribution', 'ngrams'];
  function show(page) {
    if (PAGES.indexOf(page) < 0) page = 'lens';
    PAGES.forEach(function (p) { $('page-' + p).hidden = (p !== page); });
    document.querySelectorAll('nav a').forEach(function (a) { a.classList.toggle('active', a.getAttribute('data-nav') === page); });
    $('shared').hidden = (page === 'ngrams');
    document.body.setAttribute('data-page', page);
    showError('');
  }
  function current() { return document.body.getAttribute('data-page'); }
  document.querySelectorAll('nav a').forEach(function (a) {
    a.addEventListener('click', function (ev) {
      ev.preventDefault();
      var p = a.getAttribute('data-nav');
      history.pushState({ page: p }, '', '/' + p);
      show(p);
    });
  });
  window.addEventListener('popstate', function () { show(location.pathname.replace(/^\//, '')); });

  // ---- lens -----------------------------------------------------------------------------
  function colourFor(scale, c, maxAbs) {
    // returns [r, g, b]
    var a, base;
    if (scale === 'logit') {
      a = Math.min(1, Math.abs(c.logit) / (maxAbs || 1)); base = c.logit >= 0 ? [214, 39, 40] : [31, 119, 180];
    } else if (scale === 'probability') {
      a = c.lp === null ? 0 : Math.exp(c.lp); base = [214, 39, 40];
    } else if (scale === 'logprob') {
      a = c.lp === null ? 0 : Math.max(0, Math.min(1, (c.lp + 10) / 10)); base = [214, 39, 40];
    } else { // rank of the model's top-1 among the row's logits: 1 = full colour
      a = Math.max(0, 1 - Math.log(c.rank) / Math.log(STATUS_VOCAB())); base = [44, 160, 44];
    }
    return base.map(function (v) { return Math.round(255 + (v - 255) * a); });
  }
  function STATUS_VOCAB() {
    var m = STATUS && STATUS.models.filter(function (x) { return x.name === model(); })[0];
    return m ? m.vocab_size : 50000;
  }
  function rgb(c) { return 'rgb(' + c.join(',') + ')'; }
  function ink(c) { return (0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]) < 140 ? '#fff' : '#111'; }

  function renderLens(data, t0) {
    LENS = data;
    var R = data.result, V = data.view, scale = $('lens-scale').value;
    var g = $('lens-grid'); g.textContent = '';
    var thead = el('thead'), hr = el('tr');
    hr.appendChild(el('th', '', 'row'));
    R.tokens.forEach(function (tok, i) { var th = el('th', vis(tok)); th.title = 'position ' + i; hr.appendChild(th); });
    hr.appendChild(el('th', 'mean cos'));
    thead.appendChild(hr); g.appendChild(thead);
    var tb = el('tbody');
    var maxAbs = 0;
    R.cells.forEach(function (row) { row.forEach(function (c) { if (c.top.length) maxAbs = Math.max(maxAbs, Math.abs(c.logits[0])); }); });
    R.cells.forEach(function (row, r) {
      var tr = el('tr'), rh = el('th', R.rows[r], 'row');
      if (R.row_diagnostics) rh.title = JSON.stringify(R.row_diagnostics[r]);
      tr.appendChild(rh);
      row.forEach(function (c, i) {
        var td = el('td', vis(c.top[0] !== undefined ? c.top[0] : '·'), 'cell');
        td.setAttribute('data-r', r); td.setAttribute('data-i', i);
        var info = { logit: c.logits[0], lp: V ? V.logprobs[r][i][0] : null, rank: V ? V.model_token_rank[r][i] : 1 };
        var col = colourFor(V ? scale : 'logit', info, maxAbs);
        td.style.background = rgb(col); td.style.color = ink(col);
        if (V ? V.model_token_rank[r][i] === 1 : c.top[0] === R.model_top[i]) td.classList.add('agree');
        if (c.trusted === false) { td.classList.add('untrusted'); td.title = 'not trusted: see the diagnostics'; }
        tr.appendChild(td);
      });
      tr.appendChild(el('td', fmt(R.mean_cosine[r]), 'side'));
      tb.appendChild(tr);
    });
    var mr = el('tr', null, 'extra first-extra'); mr.appendChild(el('th', 'model top-1', 'row'));
    R.model_top.forEach(function (tok, i) { var td = el('td', vis(tok), 'cell'); td.setAttribute('data-r', 'm'); td.setAttribute('data-i', i); mr.appendChild(td); });
    mr.appendChild(el('td')); tb.appendChild(mr);
    if (R.kind === 'joint') {
      var er = el('tr', null, 'extra'); er.appendChild(el('th', 'expansion top-1', 'row'));
      R.expansion_top.forEach(function (tok, i) { var td = el('td', vis(tok), 'cell'); td.setAttribute('data-r', 'e'); td.setAttribute('data-i', i); er.appendChild(td); });
      er.appendChild(el('td')); tb.appendChild(er);
    }
    g.appendChild(tb);
    var ms = performance.now() - t0;
    g.setAttribute('data-render-ms', ms.toFixed(1));
    g.setAttribute('data-server-s', data.timing.server_s);
    $('lens-status').textContent = R.kind + ' jet lens, order ' + R.order + (R.optimized ? ' (optimised weights)' : '') + ' — ' + R.model +
      ': ' + R.rows.length + ' rows × ' + R.tokens.length + ' positions; server ' + (data.timing.server_s * 1000).toFixed(0) +
      ' ms, rendered in ' + ms.toFixed(0) + ' ms';
    legend(scale, maxAbs, !!V);
    if (g.querySelector('td.untrusted')) $('lens-legend').appendChild(el('span', 'hatched cells: readout not trusted (see the diagnostics)'));
    diagnostics(R);
    $('cell-info').textContent = '';
    $('cell-info').appendChild(el('p', 'Click a cell for its top-k tokens, probabilities, cosine and decomposition.', 'hint'));
  }
  function legend(scale, maxAbs, haveView) {
    var L = $('lens-legend'); L.textContent = '';
    if (!haveView) scale = 'logit';
    var names = { probability: 'top-1 probability', logprob: 'top-1 log-probability', rank: "rank of the model's top-1 token", logit: 'top-1 logit' };
    L.appendChild(el('span', names[scale] + ':'));
    var ticks = scale === 'probability' ? [0, 0.25, 0.5, 0.75, 1] : scale === 'logprob' ? [-10, -5, -2, -1, 0]
      : scale === 'rank' ? [1, 10, 100, 1000, 10000] : [-maxAbs, -maxAbs / 2, 0, maxAbs / 2, maxAbs];
    ticks.forEach(function (v) {
      var c = colourFor(scale, { logit: v, lp: scale === 'probability' ? (v > 0 ? Math.log(v) : null) : v, rank: v }, maxAbs);
      var s = el('span', scale === 'logit' ? fmt(v, 1) : String(v)); s.style.background = rgb(c); s.style.color = ink(c); L.appendChild(s);
    });
  }
  function diagnostics(R) {
    var known = ['kind', 'order', 'model', 'optimized', 'tokens', 'rows', 'cells', 'model_top', 'mean_cosine', 'remainder_norm',
      'expansion_top', 'expansion_cosine', 'type', 'format', 'fields'];
    var extra = {};
    Object.keys(R).forEach(function (k) { if (known.indexOf(k) < 0) extra[k] = R[k]; });
    var d = $('lens-diagnostics');
    extra.remainder_norm = R.remainder_norm;
    if (R.expansion_cosine) extra.expansion_cosine = R.expansion_cosine;
    $('lens-diag-body').textContent = JSON.stringify(extra, null, 1);
    d.hidden = false;
  }
  function cellInfo(td) {
    if (!LENS) return;
    document.querySelectorAll('td.cell.selected').forEach(function (x) { x.classList.remove('selected'); });
    td.classList.add('selected');
    var R = LENS.result, V = LENS.view, r = td.getAttribute('data-r'), i = parseInt(td.getAttribute('data-i'), 10);
    var P = $('cell-info'); P.textContent = '';
    var head, toks = [], logits = [], lps = [], meta = [], extra = {};
    if (r === 'm') {
      head = 'model';
      if (V) { toks = V.model[i].top; lps = V.model[i].logprobs; } else { toks = [R.model_top[i]]; }
    } else if (r === 'e') {
      head = 'expansion (sum of the terms)'; toks = [R.expansion_top[i]];
      meta.push('cosine to the model ' + fmt(R.expansion_cosine[i]));
    } else {
      var c = R.cells[+r][i]; head = R.rows[+r];
      toks = c.top; logits = c.logits; lps = V ? V.logprobs[+r][i] : [];
      meta.push('cosine to the model ' + fmt(c.cosine));
      if (c.weight !== undefined) meta.push('weight ' + c.weight.toFixed(4));
      meta.push("row's mean cosine " + fmt(R.mean_cosine[+r]));
      if (V) meta.push("model's top-1 " + JSON.stringify(R.model_top[i]) + ': rank ' + V.model_token_rank[+r][i] + ', p ' + pct(Math.exp(V.model_token_logprob[+r][i])));
      Object.keys(c).forEach(function (k) { if (['top', 'logits', 'cosine', 'weight'].indexOf(k) < 0) extra[k] = c[k]; });
    }
    P.appendChild(el('h3', head + ' @ position ' + i + ' (after ' + JSON.stringify(R.tokens[i]) + ')'));
    meta.forEach(function (m) { P.appendChild(el('div', m)); });
    var t = el('table'); t.id = 'cell-topk';
    var h = el('tr'); ['#', 'token', 'logit', 'prob'].forEach(function (x) { h.appendChild(el('th', x)); }); t.appendChild(h);
    toks.forEach(function (tok, j) {
      var tr = el('tr');
      tr.appendChild(el('td', String(j + 1), 'num'));
      tr.appendChild(el('td', vis(tok)));
      tr.appendChild(el('td', logits[j] !== undefined ? fmt(logits[j]) : '', 'num'));
      tr.appendChild(el('td', lps[j] !== undefined && lps[j] !== null ? pct(Math.exp(lps[j])) : '', 'num'));
      t.appendChild(tr);
    });
    P.appendChild(t);
    if (Object.keys(extra).length) {
      P.appendChild(el('div', 'decomposition / diagnostics of this cell:'));
      P.appendChild(el('pre', JSON.stringify(extra, null, 1)));
    }
    var b = el('button', 'paths to this position'); b.type = 'button'; b.id = 'cell-paths';
    b.addEventListener('click', function () {
      $('paths-position').value = i; history.pushState({ page: 'paths' }, '', '/paths'); show('paths'); runPaths();
    });
    P.appendChild(b);
  }
  $('lens-grid').addEventListener('click', function (ev) {
    var td = ev.target.closest('td.cell'); if (td) cellInfo(td);
  });
  function syncLensForm() {
    var joint = $('lens-kind').value === 'joint';
    document.querySelectorAll('.joint-only').forEach(function (x) { x.hidden = !joint; });
  }
  $('lens-kind').addEventListener('change', syncLensForm);
  // the logit scale needs only the lens; probability, log-probability and rank need the
  // server's extra pass over the rows' full logits (asked for only then)
  function needsView() { return $('lens-scale').value !== 'logit'; }
  $('lens-scale').addEventListener('change', function () {
    if (!LENS) return;
    if (needsView() && !LENS.view) runLens(); else renderLens(LENS, performance.now());
  });
  function runLens() {
    var body = { model: model(), text: text(), kind: $('lens-kind').value, order: intOrNull($('lens-order').value),
      top: intOrNull($('lens-top').value), probabilities: needsView() };
    if (body.kind === 'joint') { body.centres = $('lens-centres').value; body.optimize = $('lens-optimize').checked; }
    var t0 = performance.now();
    $('lens-status').textContent = 'computing…';
    return api('lens', 'POST', '/api/lens', body).then(function (d) { renderLens(d, t0); })
      .catch(function (e) { if (e.name !== 'AbortError') $('lens-status').textContent = ''; });
  }
  $('lens-form').addEventListener('submit', function (ev) { ev.preventDefault(); runLens(); });

  // ---- paths ----------------------------------------------------------------------------
  function runPaths() {
    var body = {
      model: model(), text: text(), position: intOrNull($('paths-position').value), order: intOrNull($('paths-order').value),
      use: $('paths-use').value, avoid: $('paths-avoid').value, min_len: intOrNull($('paths-min').value),
      max_len: intOrNull($('paths-max').value), top: intOrNull($('paths-top').value), split_degrees: $('paths-split').checked
    };
    if ($('paths-token').value) body.token = $('paths-token').value;
    if ($('paths-degrees').value.trim()) body.degrees = $('paths-degrees').value;
    $('paths-status').textContent = 'computing…';
    return api('paths', 'POST', '/api/paths', body).then(function (d) {
      var T = $('paths-table'); T.textContent = '';
      var pos = d.position < 0 ? d.tokens.length + d.position : d.position;
      $('paths-status').textContent = 'top ' + d.paths.length + ' of ' + d.n_paths + ' paths for ' + JSON.stringify(d.target.token) +
        ' at position ' + pos + ' (after ' + JSON.stringify(d.tokens[pos]) + '), order ' + d.order + (d.split_degrees ? ', split by degree' : '') +
        '; server ' + (d.timing.server_s * 1000).toFixed(0) + ' ms';
      var h = el('tr'); ['#', 'path', 'logit', '', "path's own top-1"].forEach(function (x) { h.appendChild(el('th', x)); }); T.appendChild(h);
      var m = Math.max.apply(null, d.paths.map(function (p) { return Math.abs(p.logit); }).concat([1e-9]));
      d.paths.forEach(function (p, j) {
        var tr = el('tr');
        tr.appendChild(el('td', String(j + 1), 'num')); tr.appendChild(el('td', p.path, 'tok'));
        tr.appendChild(el('td', fmt(p.logit), 'num'));
        var bc = el('td'), bar = el('span', null, 'bar' + (p.logit < 0 ? ' neg' : '')); bar.style.width = (80 * Math.abs(p.logit) / m).toFixed(0) + 'px';
        bc.appendChild(bar); tr.appendChild(bc);
        tr.appendChild(el('td', vis(p.top_token), 'tok'));
        T.appendChild(tr);
      });
    }).catch(function (e) { if (e.name !== 'AbortError') $('paths-status').textContent = ''; });
  }
  $('paths-form').addEventListener('submit', function (ev) { ev.preventDefault(); runPaths(); });

  // ---- attribution ----------------------------------------------------------------------
  function runAttr() {
    var body = { model: model(), text: text(), method: $('attr-method').value, order: intOrNull($('attr-order').value),
      layer: $('attr-layer').value.trim() || null, faithfulness: $('attr-faith').checked };
    if ($('attr-target').value) body.target = $('attr-target').value;
    $('attr-status').textContent = 'computing…';
    return api('attribution', 'POST', '/api/attribute', body).then(function (d) {
      var A = d.attribution;
      $('attr-status').textContent = A.method + ' attribution of ' + JSON.stringify(A.target) + ' (id ' + A.target_id + ')' +
        (d.warnings.length ? ' — ' + d.warnings.join('; ') : '') + '; server ' + (d.timing.server_s * 1000).toFixed(0) + ' ms';
      var C = $('attr-candidates'); C.textContent = '';
      if (d.candidates) {
        C.appendChild(el('span', 'target: '));
        d.candidates.forEach(function (c) {
          var b = el('button', vis(c.token) + ' ' + pct(c.prob)); b.type = 'button';
          b.addEventListener('click', function () { $('attr-target').value = c.token.replace(/^ /, ''); runAttr(); });
          C.appendChild(b);
        });
      }
      var s = A.scores.slice(A.bos ? 1 : 0), m = Math.max.apply(null, s.map(Math.abs).concat([1e-12]));
      var T = $('attr-tokens'); T.textContent = '';
      var L = $('attr-table'); L.textContent = '';
      var h = el('tr'); ['#', 'token', 'score'].forEach(function (x) { h.appendChild(el('th', x)); }); L.appendChild(h);
      A.tokens.forEach(function (tok, i) {
        var v = A.scores[i], a = Math.min(1, Math.abs(v) / m), base = v >= 0 ? [214, 39, 40] : [31, 119, 180];
        var c = base.map(function (x) { return Math.round(255 + (x - 255) * a); });
        var sp = el('span', vis(tok), 'tok'); sp.style.background = rgb(c); sp.style.color = ink(c); sp.title = 'score ' + fmt(v, 4);
        sp.setAttribute('data-i', i); T.appendChild(sp);
        var tr = el('tr'); tr.appendChild(el('td', String(i), 'num')); tr.appendChild(el('td', vis(tok), 'tok')); tr.appendChild(el('td', fmt(v, 4), 'num'));
        L.appendChild(tr);
      });
      var F = $('attr-faith-table'); F.textContent = '';
      if (d.faithfulness) {
        var f = d.faithfulness, fh = el('tr');
        ['removed / kept', 'k tokens', 'comprehensiveness', 'sufficiency'].forEach(function (x) { fh.appendChild(el('th', x)); }); F.appendChild(fh);
        f.ratios.forEach(function (r, j) {
          var tr = el('tr'); tr.appendChild(el('td', (r * 100).toFixed(0) + '%', 'num')); tr.appendChild(el('td', String(f.k[j]), 'num'));
          tr.appendChild(el('td', fmt(f.comprehensiveness[j], 4), 'num')); tr.appendChild(el('td', fmt(f.sufficiency[j], 4), 'num')); F.appendChild(tr);
        });
        var tr2 = el('tr'); tr2.appendChild(el('td', 'AOPC')); tr2.appendChild(el('td', ''));
        tr2.appendChild(el('td', fmt(f.aopc_comprehensiveness, 4), 'num')); tr2.appendChild(el('td', fmt(f.aopc_sufficiency, 4), 'num')); F.appendChild(tr2);
      }
    }).catch(function (e) { if (e.name !== 'AbortError') $('attr-status').textContent = ''; });
  }
  $('attr-form').addEventListener('submit', function (ev) { ev.preventDefault(); runAttr(); });

  // ---- n-grams --------------------------------------------------------------------------
  function storeInfo(name) { return STATUS.stores.filter(function (s) { return s.name === name; })[0]; }
  function fillPaths() {
    var s = storeInfo($('ng-store').value), P = $('ng-path'); P.textContent = '';
    if (!s) return;
    s.runs.forEach(function (r) { var o = el('option', r.path + ' (' + r.kind + ')'); o.value = r.path; P.appendChild(o); });
    fillScores();
  }
  function fillScores() {  // the chosen run's scores; the first option is the run's own (the store's default)
    var s = storeInfo($('ng-store').value), S = $('ng-score'), keep = S.value; S.textContent = '';
    var run = s ? s.runs.filter(function (r) { return r.path === $('ng-path').value; })[0] : null;
    var tri = run && run.kind === 'trigram', list = tri ? STATUS.trigram_scores : STATUS.scores;
    var d = el('option', 'default (' + (tri ? list[0] : run ? run.score : STATUS.default_score) + ')'); d.value = ''; S.appendChild(d);
    list.forEach(function (x) { var o = el('option', x); o.value = x; S.appendChild(o); });
    S.value = list.indexOf(keep) >= 0 ? keep : '';
  }
  function ngQuery(fmtName) {
    var q = new URLSearchParams({ store: $('ng-store').value, path: $('ng-path').value, score: $('ng-score').value, n: $('ng-n').value, side: $('ng-side').value });
    if ($('ng-token').value) q.set('token', $('ng-token').value);
    if (fmtName) q.set('format', fmtName);
    return '/api/ngrams/top?' + q.toString();
  }
  function runNgrams() {
    if (!STATUS.stores.length) { showError('no n-gram store is served; start the server with --store FILE'); return Promise.resolve(); }
    $('ng-export').href = ngQuery('csv');
    return api('ngrams', 'GET', ngQuery()).then(function (d) {
      var T = $('ng-table'); T.textContent = '';
      $('ng-status').textContent = d.store + ' (' + d.model + '), path ' + d.run.path + ' (' + d.run.kind + ', order ' + d.run.order + ', K=' + d.run.top_k + ')' +
        (d.token !== null ? ', token ' + JSON.stringify(d.token) + ' as ' + d.side : '') + ', ranked by ' + d.score_label +
        (d.score === d.default_score ? " (the store's default)" : '') + ': ' + d.rows.length + ' rows' +
        (d.exact === false ? " (re-scored from each input's stored top-K: not certified exact)" : '');
      var h = el('tr'); d.columns.forEach(function (c) { h.appendChild(el('th', c === 'score' ? d.score : c)); }); T.appendChild(h);
      d.rows.forEach(function (r) {
        var tr = el('tr');
        d.columns.forEach(function (c) {
          var v = r[c], isTok = ['input', 'output', 'context'].indexOf(c) >= 0;
          tr.appendChild(el('td', v === null || v === undefined ? '' : isTok ? vis(v) : (typeof v === 'number' && !Number.isInteger(v) ? v.toPrecision(4) : String(v)), isTok ? 'tok' : 'num'));
        });
        T.appendChild(tr);
      });
    }).catch(function () {});
  }
  function runDiff() {
    var q = new URLSearchParams({ a: $('ng-store').value, b: $('ng-diff-store').value, path: $('ng-path').value || 'direct',
      top: $('ng-diff-top').value, step: $('ng-diff-step').value });
    return api('ngrams', 'GET', '/api/ngrams/diff?' + q.toString()).then(function (d) {
      var T = $('ng-diff'); T.textContent = '';
      $('ng-status').textContent = 'diff of ' + d.store_a + ' (' + d.model_a + ') and ' + d.store_b + ' (' + d.model_b + '), path ' + d.path +
        (d.identical ? ': identical' : ': ' + d.entered.length + ' bigrams entered the top ' + d.top_n + ', ' + d.left.length + ' left');
      var h = el('tr'); ['rank', d.store_a, 'p', d.store_b, 'p'].forEach(function (x) { h.appendChild(el('th', x)); }); T.appendChild(h);
      d.side_by_side.forEach(function (row) {
        var tr = el('tr'); tr.appendChild(el('td', String(row.rank), 'num'));
        [row.a, row.b].forEach(function (x) {
          tr.appendChild(el('td', x ? vis(x[0]) + ' \u2192 ' + vis(x[1]) : '', 'tok'));
          tr.appendChild(el('td', x ? x[2].toPrecision(3) : '', 'num'));
        });
        T.appendChild(tr);
      });
    }).catch(function () {});
  }
  $('ng-store').addEventListener('change', fillPaths);
  $('ng-path').addEventListener('change', fillScores);
  $('ng-form').addEventListener('submit', function (ev) { ev.preventDefault(); runNgrams(); });
  $('ng-diff-form').addEventListener('submit', function (ev) { ev.preventDefault(); runDiff(); });

  // ---- shared ---------------------------------------------------------------------------
  $('text').addEventListener('keydown', function (ev) {
    if (ev.key === 'Enter' && !ev.shiftKey) {
      ev.preventDefault();
      var p = current();
      if (p === 'lens') runLens(); else if (p === 'paths') runPaths(); else if (p === 'attribution') runAttr();
    }
  });
  function init(st) {
    STATUS = st;
    var M = $('model');
    st.models.forEach(function (m) { var o = el('option', m.name); o.value = m.name; M.appendChild(o); });
    M.value = st.default_model;
    var S = $('ng-store'), D = $('ng-diff-store');
    st.stores.forEach(function (s) {
      var o = el('option', s.name + ' (' + s.model + ')'); o.value = s.name; S.appendChild(o);
      var o2 = el('option', s.name + ' (' + s.model + ')'); o2.value = s.name; D.appendChild(o2);
    });
    fillPaths();
    $('lens-order').max = st.limits.max_order; $('lens-top').max = st.limits.max_top;
    syncLensForm();
    show(location.pathname.replace(/^\//, ''));
    document.body.setAttribute('data-ready', '1');
  }
  fetch('/api/status').then(function (r) { return r.json(); }).then(init).catch(function (e) { showError('cannot reach the server: ' + e.message); });
})();

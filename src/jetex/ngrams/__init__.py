"""Jet n-grams (paper Sec. 4): data-free bigram and skip-trigram statistics of a model,
evaluated exhaustively over the vocabulary and stored in a DuckDB n-gram database.

- :mod:`~jetex.ngrams.paths`: the named paths (``direct``, ``mlp:N``, ``mlps``, ``attn-free``, ``attn:L.H``)
- :mod:`~jetex.ngrams.engine`: streamed exhaustive evaluation of bigram paths
- :mod:`~jetex.ngrams.trigrams`: exact factored top-K search of skip-trigrams per head
- :mod:`~jetex.ngrams.fidelity`: agreement of bigram paths with the model's own predictions
- :mod:`~jetex.ngrams.store`: the DuckDB database (schema, resumability)
- :mod:`~jetex.ngrams.extract`: :func:`extract_ngrams`, everything together
"""

from jetex.ngrams.engine import BigramBatch, BigramTable, GlobalCandidates, bigram_table, iter_bigram_batches
from jetex.ngrams.extract import RunSummary, extract_ngrams
from jetex.ngrams.fidelity import Fidelity, path_fidelity
from jetex.ngrams.paths import BigramPath, TrigramPath, available_paths, parse_path, parse_paths
from jetex.ngrams.store import NgramStore
from jetex.ngrams.table import NgramTable, ngram_table
from jetex.ngrams.trigrams import (
    TrigramTable,
    head_summaries,
    top_trigrams,
    top_trigrams_brute_force,
)

__all__ = [
    "BigramBatch",
    "BigramPath",
    "BigramTable",
    "Fidelity",
    "GlobalCandidates",
    "NgramStore",
    "NgramTable",
    "ngram_table",
    "RunSummary",
    "TrigramPath",
    "TrigramTable",
    "available_paths",
    "bigram_table",
    "extract_ngrams",
    "head_summaries",
    "iter_bigram_batches",
    "parse_path",
    "parse_paths",
    "path_fidelity",
    "top_trigrams",
    "top_trigrams_brute_force",
]

"""Applications of jet n-grams (paper Sec. 5, METHODS.md §5), each a query over bigram
tables that a jet path evaluates exhaustively over the vocabulary:

- :mod:`~jetex.apps.tables`: streamed per-input top-K tables of a bigram path, global ranks
- :mod:`~jetex.apps.diff`: model diffing (ranks gained/lost, entered/left, probability changes; Table 5)
- :mod:`~jetex.apps.index`: knowledge indices (keyword bigram mass; the toxicity index of Table 3)
- :mod:`~jetex.apps.dynamics`: training dynamics over checkpoints (Table 4, Fig. 4, Fig. 5), locally or on Ray
- :mod:`~jetex.apps.roles`: roles of MLPs / first-layer heads (Tables 1, 2)
- :mod:`~jetex.apps.ablation`: the ablation protocol (corpus contexts, mean/zero ablation, controls, effect size)
- :mod:`~jetex.apps.corpus`: real text every machine has (the Python standard library)
"""

from jetex.apps.diff import BigramDelta, DiffResult, diff_bigrams
from jetex.apps.dynamics import DynamicsResult, bigram_dynamics
from jetex.apps.dynamics_ray import bigram_dynamics_ray
from jetex.apps.index import IndexResult, knowledge_index, load_keywords
from jetex.apps.ablation import AblationResult, Component, EffectSize, ablation_study
from jetex.apps.roles import ComponentRole, component_roles, head_roles, label_role, mlp_roles
from jetex.apps.tables import TopKTable, table_from_store, topk_table

__all__ = [
    "AblationResult",
    "Component",
    "EffectSize",
    "ablation_study",
    "component_roles",
    "BigramDelta",
    "ComponentRole",
    "DiffResult",
    "DynamicsResult",
    "IndexResult",
    "TopKTable",
    "bigram_dynamics",
    "bigram_dynamics_ray",
    "diff_bigrams",
    "head_roles",
    "knowledge_index",
    "label_role",
    "load_keywords",
    "mlp_roles",
    "table_from_store",
    "topk_table",
]

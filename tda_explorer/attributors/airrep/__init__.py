"""AirRep (Sun et al., 2025): learned attribution representations with attention pooling.

Modules: `encoder` (per-kind backbone + linear projector), `pooling` (attention / sum group scores),
`data` (subset retraining and normalised labels, cached and resumable), `train` (pairwise ranking
loss, AdamW, checkpoints, early stopping), `attributor` (the registered "airrep" Attributor).
"""

from __future__ import annotations

from tda_explorer.attributors.airrep.attributor import AirRep
from tda_explorer.attributors.airrep.data import (
    AirRepData,
    AirRepDataConfig,
    check_disjoint_subsets,
    generate_airrep_data,
    normalise_labels,
    training_subset_masks,
)
from tda_explorer.attributors.airrep.encoder import AirRepEncoder, EncoderConfig, build_encoder
from tda_explorer.attributors.airrep.pooling import (
    POOLINGS,
    attention_pool,
    attention_pool_masked,
    group_scores,
    sum_pool,
)
from tda_explorer.attributors.airrep.train import (
    RankTrainConfig,
    TrainedEncoder,
    pairwise_ranking_loss,
    train_encoder,
)

__all__ = [
    "POOLINGS",
    "AirRep",
    "AirRepData",
    "AirRepDataConfig",
    "AirRepEncoder",
    "EncoderConfig",
    "RankTrainConfig",
    "TrainedEncoder",
    "attention_pool",
    "attention_pool_masked",
    "build_encoder",
    "check_disjoint_subsets",
    "generate_airrep_data",
    "group_scores",
    "normalise_labels",
    "pairwise_ranking_loss",
    "sum_pool",
    "train_encoder",
    "training_subset_masks",
]

"""The "airrep" attributor: a learned representation trained inside `fit`, scored by dot products.

`fit(run, train)` (cached in the workspace, with progress):
1. label queries = the run dataset's validation split (or `label_queries=` given to the constructor),
   never training examples and never the test queries it is evaluated on;
2. training data (`data.py`, artifact "airrep_data"): models of `run.model_config` /
   `run.train_config` retrained on M random subsets (disjoint from the LDS evaluation subsets) and the
   normalised label `r(x, S)` of every (label query, subset);
3. the encoder (`train.py`, artifact "airrep_encoder") trained with the pairwise ranking loss;
4. the training embeddings `Enc(z_i)` `[N, dim]`, computed once and kept.

Distilled mode (`teacher=<attributor>` given to the constructor): step 2 is replaced by teacher-labelled
data (`teacher.py`, artifact "airrep_teacher"): the teacher (fitted on the run if it is not yet) scores
the label queries once, and the label of (query, subset) is the sum of its scores over the subset's
members, for `data.n_subsets` random subsets (thousands cost seconds, not retrainings). `teacher` is not
a setting: `compute_scores` never builds a distilled AirRep, so its score cache holds only the
retrained kind.

Backbone (`encoder={"backbone": ...}`): "input" (default) trains the encoder on the raw examples;
"model_features" (AirRep's pretrained-backbone idea) feeds it the attributed run's frozen last-layer
gradient features of every example over all the run's seeds, whitened per seed on the training set and
projected to `feature_dim` (`model_features.py`; one forward pass per seed and example), embedded by the
tabular MLP with its linear skip (orthonormal at initialisation). With this backbone's defaults
(`dim` = `feature_dim`, `depth` 1, no label coupling; `EncoderConfig`) the untrained student scores with
the whitened features' dot product (a last-layer TRAK-like kernel) up to a scale; with a smaller `dim`
the skip is a random orthogonal projection of the features, and with `label_coupling` cross-class pairs
start at zero.
Training steps then cost milliseconds, and scoring a query costs one forward pass per seed, the small
encoder and one matmul. The encoder's cache key then includes the run's weights.

Scores (rank-only: the scale is learned from normalised ranks, not a loss change):
- `score(queries)[q, i] = <Enc(x_q), Enc(z_i)>` `[n_query, N]` float32, one matmul per query chunk;
  positive = z_i helps x_q (the encoder is trained so that subsets with larger `r` — lower query loss
  after training on them — get larger scores).
- `score_groups(queries, groups)[q, j] = f(x_q, S_j)` with attention pooling
  `sum_{i in S_j} softmax_i(s_i) s_i` (setting `pooling="attention"`, the default) or the plain sum
  (`pooling="sum"`, the ablation; the encoder is then also trained with sum pooling).
- `self_influence()[i] = <Enc(z_i), Enc(z_i)> = ||Enc(z_i)||^2` `[N]`: the score of z_i with itself as
  the query, computed directly. It measures how strongly the encoder expects z_i to support an
  example like itself (always >= 0); it is not a leave-one-out loss change, and training examples were
  never label queries, so read it as a ranking heuristic (e.g. for mislabel triage), not a calibrated
  quantity.
- `top_k(queries, k)`: streaming top-k over the cached embeddings (no `[n_query, N]` matrix).

Cost: `fit` pays once for M subset retrainings (default 256, through the Executor) and the encoder
training, whose every step re-embeds the subsets' members with gradients (all N training examples for
half subsets). On a CPU prefer `encoder={"image_backbone": "mlp"}` for images, and for text set
`training={"members_per_step": 512}` (or `encoder={"freeze_text": True}`). After that, scoring a query is
one forward pass and one matmul.
"""

from __future__ import annotations

import torch

from tda_explorer.attributors.airrep.data import AirRepData, AirRepDataConfig, generate_airrep_data
from tda_explorer.attributors.airrep.encoder import EncoderConfig
from tda_explorer.attributors.airrep.model_features import (
    feature_set,
    feature_transform,
    seed_gradients,
)
from tda_explorer.attributors.airrep.pooling import group_scores
from tda_explorer.attributors.airrep.teacher import teacher_airrep_data
from tda_explorer.attributors.airrep.train import RankTrainConfig, TrainedEncoder, train_encoder
from tda_explorer.attributors.base import Attributor, register
from tda_explorer.attributors.method_settings import AirRepSettings
from tda_explorer.backend.features import group_matrix
from tda_explorer.backend.scoring import TopK, dot_scores, streaming_topk
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ConfigError
from tda_explorer.store import Workspace, require_workspace
from tda_explorer.training.executor import Executor
from tda_explorer.training.runs import TrainedRun
from tda_explorer.training.trainer import Progress


@register
class AirRep(Attributor):
    """AirRep (Sun et al., 2025); see the module docstring.

    Settings: `AirRepSettings` (`pooling`; `encoder`, `data`, `training` as dicts of `EncoderConfig`,
    `AirRepDataConfig`, `RankTrainConfig` fields; `batch_size`). Not settings (they do not change the
    result): `progress`; `workspace` (where data, checkpoints and the encoder are cached; required
    to fit, `compute_scores` passes its own); `executor` (runs the subset retrainings, default `LocalExecutor()`); `label_queries`
    (instead of the run dataset's validation split; its fingerprint keys the data artifact); `teacher`
    (an attributor whose summed scores label the subsets instead of retraining; see the module docstring).
    """

    name = "airrep"
    Settings = AirRepSettings
    settings: AirRepSettings
    rank_only = True

    def __init__(
        self,
        settings: AirRepSettings | None = None,
        /,
        progress: Progress | None = None,
        workspace: Workspace | None = None,
        executor: Executor | None = None,
        label_queries: ExampleSet | None = None,
        teacher: Attributor | None = None,
        **values,
    ) -> None:
        super().__init__(settings, progress=progress, **values)
        self.workspace, self.executor, self.label_queries = workspace, executor, label_queries
        self.teacher = teacher

    # ---------------------------------------------------------------------------------- fitting
    def _label_queries(self, run: TrainedRun) -> ExampleSet:
        if self.label_queries is not None:
            return self.label_queries
        if not run.dataset:
            raise ConfigError(
                "AirRep needs label queries: the run records no dataset spec, so pass "
                "label_queries=<a held-out ExampleSet, e.g. the validation split> to the constructor."
            )
        from tda_explorer.data import DatasetSpec, load_dataset

        return load_dataset(DatasetSpec.from_dict(run.dataset)).val

    def _phase(self, what: str) -> Progress | None:
        if self.progress is None:
            return None
        progress = self.progress

        def report(done: int, total: int, msg: str) -> None:
            progress(done, total, f"airrep {what}: {msg}")

        return report

    def _data(
        self, run: TrainedRun, train: ExampleSet, queries: ExampleSet, config: AirRepDataConfig, ws: Workspace
    ) -> AirRepData:
        """Retrained subsets (default) or, with a teacher, teacher-labelled subsets."""
        if self.teacher is None:
            recipe = (run.model_config, run.require_recipe("airrep"))
            return generate_airrep_data(
                train,
                queries,
                recipe,
                config,
                workspace=ws,
                executor=self.executor,
                progress=self._phase("data"),
            )
        teacher = self.teacher

        def teacher_scores() -> torch.Tensor:
            if not getattr(teacher, "fitted_", False):
                teacher.fit(run, train)
            return teacher.score(queries)

        key = {"method": teacher.name, "settings": teacher.settings.config(), "run": run.key}
        key["weights"] = run.fingerprint()
        return teacher_airrep_data(teacher_scores, train, queries, key, config, workspace=ws)

    def fit(self, run: TrainedRun, train: ExampleSet) -> AirRep:
        """Generate (or load) the training data, train (or load) the encoder, embed `train` once."""
        s = self.settings
        ws = require_workspace(self.workspace, "AirRep.fit")
        queries = self._label_queries(run)
        self.data_: AirRepData = self._data(run, train, queries, AirRepDataConfig(**s.data), ws)
        enc_cfg = EncoderConfig(**s.encoder)
        self.feature_models_ = self.projection_ = None
        enc_train, enc_queries, inputs_key = train, queries, None
        if enc_cfg.backbone == "model_features":
            self.feature_models_ = [run.model(seed) for seed in run.seeds]
            grads = seed_gradients(self.feature_models_, train)  # one forward pass per seed, used twice
            self.projection_ = feature_transform(
                self.feature_models_, train, enc_cfg.feature_dim, enc_cfg.feature_damping, gradients=grads
            )
            enc_train = feature_set(self.feature_models_, train, self.projection_, grads)
            del grads
            enc_queries = feature_set(self.feature_models_, queries, self.projection_)
            inputs_key = {
                "features": "whitened_last_layer_gradients",
                "run": run.key,
                "weights": run.fingerprint(),
            }
        self.trained_: TrainedEncoder = train_encoder(
            self.data_,
            enc_train,
            enc_queries,
            enc_cfg,
            RankTrainConfig(**s.training),
            s.pooling,
            ws,
            self._phase("encoder"),
            inputs_key,
        )
        self.encoder_ = self.trained_.encoder
        self.train_embeddings_ = self._embed_inputs(enc_train)
        self.costs_ = {"data_seconds": self.data_.seconds, "train_seconds": self.trained_.seconds}
        self.artifact_extra_ = {  # recorded next to cached scores (attributors.scores)
            "airrep": {
                **self.costs_,
                "data_key": self.data_.key,
                "encoder_key": self.trained_.key,
                "best_epoch": self.trained_.best_epoch,
                "label_queries": len(queries),
                "teacher": None if self.teacher is None else self.teacher.name,
            }
        }
        self.n_train_ = len(train)
        self.fitted_ = True
        return self

    # ---------------------------------------------------------------------------------- scoring
    def embed(self, examples: ExampleSet) -> torch.Tensor:
        """`Enc(x)` `[n, dim]` float32 for any ExampleSet of the training kind."""
        if getattr(self, "encoder_", None) is None:
            self._check_fitted()
        if self.feature_models_ is not None:
            examples = feature_set(self.feature_models_, examples, self.projection_)
        return self._embed_inputs(examples)

    def _embed_inputs(self, examples: ExampleSet) -> torch.Tensor:
        """`Enc` of a set already in the encoder's input form (raw examples, or their model features)."""
        return self.encoder_.embed(self.encoder_.prepare(examples), self.settings.batch_size)

    def score(self, queries: ExampleSet) -> torch.Tensor:
        """`[n_query, N]` float32, `<Enc(x_q), Enc(z_i)>` (positive = helps; rank-only)."""
        self._check_fitted()
        return dot_scores(self.embed(queries), self.train_embeddings_)

    def top_k(self, queries: ExampleSet, k: int = 10, largest: bool = True) -> TopK:
        """The k most supporting (`largest`) or opposing training examples per query, streamed."""
        self._check_fitted()
        return streaming_topk(self.embed(queries), self.train_embeddings_, k, largest)

    def self_influence(self) -> torch.Tensor:
        """`||Enc(z_i)||^2` `[N]` float32 (see the module docstring for its reading)."""
        self._check_fitted()
        return self.train_embeddings_.square().sum(1)

    def score_groups(self, queries: ExampleSet, groups: torch.Tensor) -> torch.Tensor:
        """`[n_query, n_groups]` pooled group scores `f(x_q, S_j)` (attention or sum, per `pooling`)."""
        self._check_fitted()
        mask = group_matrix(groups, self.n_train_) > 0
        return group_scores(self.embed(queries), self.train_embeddings_, mask, self.settings.pooling)

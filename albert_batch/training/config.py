"""Typed, validated settings of fine-tuning (`albert-batch finetune`) and pretraining (`albert-batch pretrain`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from albert_batch.contract import Task
from albert_batch.errors import ConfigError
from albert_batch.settings import setting
from albert_batch.storage import Location
from albert_batch.training.model_init import MAX_LENGTH, SIZES

# The settings both commands have, declared once: `setting`'s arguments by field name. Each command lists
# them among its own settings where its flags show them (the CLI makes a flag of every field, in field order,
# so a shared base class would move them all to the front). A command words the help of those that mean
# something a little different to it.
_SHARED: dict[str, dict[str, Any]] = {
    "output": {"metavar": "URI"},
    "base_model": {"default": None, "metavar": "URI"},
    "init": {"default": None, "choices": list(SIZES)},
    "epochs": {"default": 3, "type": int, "metavar": "N"},
    "batch_size": {"default": 32, "type": int, "metavar": "N", "help": "sequences per training step (default: 32)"},
    "learning_rate": {"default": None, "type": float, "metavar": "LR"},
    "seed": {"default": 0, "type": int, "metavar": "N", "help": "random seed (default: 0)"},
    "num_workers": {"default": 1, "type": int, "metavar": "N", "help": "data-parallel Ray Train workers (default: 1)"},
    "use_gpu": {"default": False, "action": "store_true", "help": "one GPU per worker"},
    "max_length": {"default": MAX_LENGTH, "type": int, "metavar": "TOKENS"},
    "vocab_size": {"default": 8000, "type": int, "metavar": "N",
                   "help": "SentencePiece vocabulary of a model built with --init (default: 8000)"},
    "text_column": {"default": "text", "metavar": "NAME", "help": "text column (default: text)"},
    "ray_address": {"default": None, "metavar": "ADDRESS", "help": "'auto' or host:port to join a cluster"},
    "allow_pickle_weights": {"default": False, "action": "store_true",
                             "help": "accept pytorch_model.bin weights of --base-model (runs pickle)"},
}


def _shared(name: str, help: str | None = None) -> Any:
    """The shared setting ``name`` as a fresh field (a dataclass field belongs to one class), with the
    command's own ``help`` where it gives one."""
    return setting(**(_SHARED[name] | ({"help": help} if help is not None else {})))


def _check_shared(config: FinetuneConfig | PretrainConfig, *, rate_example: str) -> None:
    """The checks of the settings both commands have."""
    if (config.base_model is None) == (config.init is None):
        raise ConfigError("give exactly one of base_model (--base-model) and init (--init tiny|base)")
    if config.init is not None and config.init not in SIZES:
        raise ConfigError(f"init {config.init!r} must be one of {', '.join(SIZES)}")
    for name, low in (("epochs", 1), ("batch_size", 1), ("num_workers", 1), ("max_length", 16), ("vocab_size", 100)):
        if int(getattr(config, name)) < low:
            raise ConfigError(f"{name} must be at least {low}")
    if config.max_length > MAX_LENGTH:
        raise ConfigError(f"max_length must be at most {MAX_LENGTH} (ALBERT's position embeddings)")
    if config.learning_rate is not None and not 0 < config.learning_rate < 1:
        raise ConfigError(f"learning_rate must be between 0 and 1, e.g. {rate_example}")


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Settings of one fine-tuning run; validated at construction."""

    task: Task = setting(choices=[t.value for t in Task], help="what the model learns: classify or ner")
    train: str = setting(metavar="URI", help="labelled Parquet file or folder")
    eval: str = setting(metavar="URI", help="held-out labelled Parquet, scored every epoch")
    output: str = _shared("output", help="where the model folder goes (local or s3://)")
    base_model: str | None = _shared("base_model", help="pretrained ALBERT: folder, s3:// prefix or hub id")
    init: str | None = _shared("init", help="build ALBERT from scratch (offline), with a SentencePiece tokenizer "
                              "trained on the training texts")
    epochs: int = _shared("epochs", help="passes over the training data (default: 3)")
    batch_size: int = _shared("batch_size")
    learning_rate: float | None = _shared("learning_rate", help="AdamW learning rate (default 2e-3 with --init or a "
                                         "base model that `pretrain --init` wrote, else 5e-5)")
    seed: int = _shared("seed")
    num_workers: int = _shared("num_workers")
    use_gpu: bool = _shared("use_gpu")
    max_length: int = _shared("max_length", help="tokens per training sequence (default 512; long NER texts are cut "
                             "into windows)")
    max_windows: int | None = setting(None, type=int, metavar="N",
                                      help="NER: train on at most the first N windows of each long text (default: all)")
    vocab_size: int = _shared("vocab_size")
    text_column: str = _shared("text_column")
    label_column: str = setting("label", metavar="NAME", help="classification label column (default: label)")
    entities_column: str = setting("entities", metavar="NAME", help="NER spans column (default: entities)")
    ray_address: str | None = _shared("ray_address")
    allow_pickle_weights: bool = _shared("allow_pickle_weights")
    # Python API only: Ray resources every training worker needs besides its CPUs or GPU, such as a custom
    # resource that only the nodes meant for training have ({"trainer": 1}).
    worker_resources: dict[str, float] | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "task", Task(str(self.task)))
        except ValueError:
            raise ConfigError(f"task {self.task!r} must be classify or ner") from None
        _check_shared(self, rate_example="5e-5")
        for name in ("train", "eval", "output"):
            Location.parse(getattr(self, name), what=name)
        if self.max_windows is not None and int(self.max_windows) < 1:
            raise ConfigError("max_windows must be at least 1 (or unset: every window of every text)")


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """Settings of one pretraining run (masked LM plus sentence-order prediction); validated at construction."""

    corpus: str = setting(metavar="URI", help="unlabelled Parquet file or folder (local, file:// or s3://), read as "
                          "`run` reads its input")
    output: str = _shared("output", help="where the pretrained model folder goes (local or s3://)")
    base_model: str | None = _shared("base_model", help="ALBERT to continue pretraining: folder, s3:// prefix or hub id")
    init: str | None = _shared("init", help="pretrain ALBERT from scratch (offline), with a SentencePiece tokenizer "
                              "trained on the corpus")
    epochs: int = _shared("epochs", help="passes over the corpus (default: 3)")
    max_steps: int | None = setting(None, type=int, metavar="N",
                                    help="stop after N optimizer steps, if that comes before the last epoch's end")
    batch_size: int = _shared("batch_size")
    learning_rate: float | None = _shared("learning_rate",
                                         help="AdamW learning rate (default 1e-4 with --base-model, 1e-3 with --init)")
    mlm_probability: float = setting(0.15, type=float, metavar="P",
                                     help="share of tokens masked, as whole words (default: 0.15)")
    max_length: int = _shared("max_length", help="tokens per training sequence (default: 512)")
    report_every: int | None = setting(None, type=int, metavar="STEPS",
                                       help="also score the held-out slice every N steps (default: after each epoch)")
    seed: int = _shared("seed")
    num_workers: int = _shared("num_workers")
    use_gpu: bool = _shared("use_gpu")
    vocab_size: int = _shared("vocab_size")
    text_column: str = _shared("text_column")
    id_column: str = setting("id", metavar="NAME", help="id column; it decides the held-out slice (default: id)")
    ray_address: str | None = _shared("ray_address")
    allow_pickle_weights: bool = _shared("allow_pickle_weights")

    def __post_init__(self) -> None:
        _check_shared(self, rate_example="1e-4")
        corpus, output = Location.parse(self.corpus, what="corpus"), Location.parse(self.output, what="output")
        if corpus.contains(output):
            raise ConfigError(f"output {output} is the corpus location or inside it; choose a separate output")
        for name in ("max_steps", "report_every"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1 (or unset)")
        if not 0 < self.mlm_probability < 1:
            raise ConfigError("mlm_probability must be between 0 and 1, e.g. 0.15")
        if not self.text_column or not self.id_column or self.text_column == self.id_column:
            raise ConfigError("text_column and id_column must be two different, non-empty column names")

    @property
    def lr(self) -> float:
        """1e-4 continues a pretrained model's training gently (domain-adaptive pretraining); a model built
        from scratch learns in reasonable time only with a higher rate."""
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-4 if self.base_model else 1e-3

"""The recipe's schema: one typed tree holding every default graft uses, with the checks that span sections
(including the task's own, from the task registry)."""

from __future__ import annotations

import codecs
import re
from functools import reduce
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, field_validator, model_validator

from graft.evaluation.metrics import SCALAR_METRICS, metric_mode
from graft.tasks import TASKS

PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]

MetricName = Literal[SCALAR_METRICS]  # type: ignore[valid-type]  # the names metrics.py computes


DATA_PATHS = ("train", "validation", "test")
HUB_PREFIX = "hf://"
HUB_ID = re.compile(r"hf://(?P<repo>[\w.-]+(?:/[\w.-]+)?)(?::(?P<config>[\w.+-]+))?(?:@(?P<revision>[\w./-]+))?")
"""A Hugging Face Hub dataset: `hf://owner/name`, then optionally `:config` and `@revision`."""


def _data_source(value: Any) -> Path | str:
    # A hub id stays a string: as a Path, `hf://imdb` would fold into `hf:/imdb`, a relative path.
    if isinstance(value, str) and value.startswith(HUB_PREFIX):
        if not HUB_ID.fullmatch(value):
            raise ValueError("a Hugging Face dataset is hf://owner/name, optionally followed by :config and "
                             "@revision (e.g. hf://stanfordnlp/imdb, hf://nyu-mll/glue:sst2)")
        return value
    if isinstance(value, str | Path):
        return Path(value)
    raise ValueError("expected a file, a folder, a glob such as reviews/*.csv, or hf://owner/name")


DataSource = Annotated[Path | str, PlainValidator(_data_source), PlainSerializer(str, when_used="json")]
"""Where a split's rows are: a file, a folder, a glob, or a Hugging Face Hub dataset (`hf://owner/name`)."""


class Section(BaseModel):
    """A recipe section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class HeadSpec(Section):
    """The new output layer. By default one Linear sized to the labels; pooling, BatchNorm, dropout and a hidden
    layer make a declared head (e.g. pool: avgmax, batchnorm: true, dropout: 0.25)."""

    path: str | None = None
    """Plain modules: the attribute path of the output layer (`fc`, `classifier.3`); null: the last nn.Linear."""
    input_from: str | None = None
    """Plain modules: feed the head from this module's output (e.g. `layer3`, a feature map) instead of the
    output layer's own input."""
    pool: Literal["none", "avg", "max", "avgmax"] = "none"
    """Pool a feature map [C, H, W] to a vector: average, max, or both concatenated; any input size works."""
    batchnorm: bool = False
    dropout: Fraction = 0.0
    """Probability of an nn.Dropout just before the new head's first Linear, active in training (and in
    `graft predict --mc-dropout`); 0: none. Hugging Face classifiers keep their own dropout as well (BERT drops the
    pooled output with `classifier_dropout`, else `hidden_dropout_prob`), so there the two apply one after the other:
    a value adds dropout, it does not replace the model's. This is how a model with no dropout of its own (most CNNs)
    gets some for MC dropout. A declared head is saved with the model (Hugging Face: `graft_head` in config.json)
    and rebuilt when the run is loaded."""
    hidden: PositiveInt | None = None
    """Width of one hidden Linear+ReLU layer before the output layer; null: none."""


class ModelSpec(Section):
    name: str = "minilm"
    """A local directory, a hub id, a short name from `graft.models.hf.SHORT_NAMES` (e.g. `minilm`), or a plain
    nn.Module factory as `package.module:function` or `path/to/file.py:function`."""
    kwargs: dict[str, Any] = {}
    """Keyword arguments for a factory."""
    checkpoint: Path | None = None
    """Weights for a factory-built module: .safetensors, or a PyTorch file (loaded with weights_only=True)."""
    renames: dict[str, str] = {}
    """Checkpoint key prefix renames {old: new}, applied after a `module.` prefix (multi-GPU) is stripped."""
    source_labels: list[str] | None = None
    """Class names of the checkpoint's output rows; rows of target labels with the same name are copied into the
    new head. Hugging Face models read them from their config."""
    head: HeadSpec = HeadSpec()
    groups: list[str] | None = None
    """Layer groups as regexes over parameter names, input to output (each parameter joins the first match; the
    head is always the last group); null: per model family (embeddings, each layer / stage, ...)."""
    revision: str | None = None
    max_length: PositiveInt = 128
    """Longer texts are truncated to this many tokens."""
    pooling: Literal["auto", "cls", "mean", "pooler"] = "auto"
    """Text classifiers: what the head reads. auto: what the model was trained with (a sentence-transformers model's
    pooling config, else the model's own); mean: the mean of the token states; cls: the first token's state;
    pooler: the base model's pooler (BERT's dense + tanh on the first token)."""

    @property
    def is_factory(self) -> bool:
        return ":" in self.name and not Path(self.name).is_dir()


AUTO_CROP = (0.35, 1.0)
SMALL_IMAGE = 64
"""Inputs smaller than this (px) get no random crop from `crop_scale: auto`, and shifts from `translate: auto`."""
AUTO_TRANSLATE = 1 / 8
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class AugmentSpec(Section):
    """Train-time random augmentation, each part on or off (validation and test are never augmented): of images
    (crop_scale, crop_ratio, hflip, rotation, color_jitter; flips, and crops from 64 px, on by default) or of texts
    (swap, delete, insert, synonym; all off by default). Off for the whole run when the frozen-backbone feature cache
    is used: the cache needs fixed inputs."""

    crop_scale: (tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] | Literal["auto"]
                 | None) = "auto"
    """Random resized crop: the crop's share of the (resized) image's area, [min, max]; null: centre crop only;
    auto: [0.35, 1] for inputs of 64 px and more, none below (a crop of a 32 px image loses its subject: on
    CIFAR-sized data it cost the ResNet-20 4 to 6 points)."""
    crop_ratio: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (0.75, 4 / 3)
    """The crop's aspect ratio range (width / height)."""
    translate: Annotated[float, Field(ge=0, lt=0.5)] | Literal["auto"] = "auto"
    """Shift each image by up to this share of its side, whole pixels either way, black filling in (padding and
    cropping back at random, as CIFAR training does); 0: none; auto: 1/8 (4 pixels of 32) below 64 px, where random
    resized crops are off, else none."""
    hflip: bool = True
    """Mirror half of the images left to right (turn off when left and right mean different things)."""
    rotation: Annotated[float, Field(ge=0, le=180)] = 0.0
    """Rotate by up to this many degrees either way; 0: no rotation."""
    color_jitter: Fraction = 0.0
    """Scale brightness, contrast and saturation each by a random factor in [1 - j, 1 + j]; 0: none."""
    swap: Probability = 0.0
    """Text: swap two words at random places, about this share of the word count times (EDA's random swap)."""
    delete: Probability = 0.0
    """Text: drop each word with this probability, always keeping one (EDA's random deletion)."""
    insert: Probability = 0.0
    """Text: insert about this share of the word count of words at random places, each a synonym of a random word
    of the text, or a copy of it when it has none (EDA's random insertion)."""
    synonym: Probability = 0.0
    """Text: replace each word that has synonyms by one of them with this probability (EDA's synonym replacement).
    Words are split at whitespace; only alphabetic ones that are whole words of the model's vocabulary and not
    English stop-words have synonyms: their nearest whole words in the model's own input embeddings (no download).
    WordPiece, byte-level BPE (Ġ) and SentencePiece (▁) vocabularies."""
    synonym_neighbours: PositiveInt = 5
    """Text: how many nearest words a word's synonyms are drawn from, at most."""
    synonym_similarity: Annotated[float, Field(gt=0, le=1)] = 0.55
    """Text: the least cosine similarity of a synonym's input embedding to the word's. In all-MiniLM-L6-v2 a floor
    of 0.55 keeps movie -> film (0.71) and terrible -> awful (0.68) but not good -> bad (0.53)."""

    @field_validator("crop_scale", "crop_ratio")
    @classmethod
    def _ordered(cls, v: tuple[float, float] | str | None) -> tuple[float, float] | str | None:
        if isinstance(v, tuple) and v[0] > v[1]:
            raise ValueError("must be [min, max] with min <= max")
        return v

    @property
    def image_on(self) -> bool:
        return (self.crop_scale is not None or self.hflip or self.rotation > 0 or self.color_jitter > 0
                or self.translate != 0)

    @property
    def text_on(self) -> bool:
        return self.swap > 0 or self.delete > 0 or self.insert > 0 or self.synonym > 0

    def crop_for(self, size: tuple[int, ...]) -> tuple[float, float] | None:
        """The crop scale for inputs of `size` (h, w): `auto` resolved."""
        if self.crop_scale != "auto":
            return self.crop_scale  # type: ignore[return-value]
        return AUTO_CROP if min(size) >= SMALL_IMAGE else None

    def translate_for(self, size: tuple[int, ...]) -> float:
        """The largest shift for inputs of `size` (h, w): `auto` resolved."""
        if self.translate != "auto":
            return float(self.translate)
        return 0.0 if min(size) >= SMALL_IMAGE else AUTO_TRANSLATE


class DataSpec(Section):
    train: DataSource
    """A data file (CSV, TSV, JSON, JSON lines, Parquet), a folder (of class folders for images, or made by
    `save_to_disk`), a glob of files read as one (`reviews/*.csv`, sorted), or a Hugging Face Hub dataset
    (`hf://owner/name[:config][@revision]`, through datasets.load_dataset). A DatasetDict (a saved folder holding
    dataset_dict.json, or a hub dataset) gives its splits by name: train; validation, valid, val or dev; test; a
    split the recipe also gives as a file is taken from the file."""
    validation: DataSource | None = None
    test: DataSource | None = None
    text_column: str = "text"
    label_column: str = "label"
    label_delimiter: str = ","
    """Multi-label: what separates the labels of one row in data.label_column (`a,b` is two labels; an empty cell,
    none)."""
    label_columns: list[str] | None = None
    """Multi-label: one 0/1 column per label (the column names are the labels), instead of data.label_column."""
    target_columns: list[str] | None = None
    """Regression with several targets: their numeric columns, e.g. [valence, arousal]; null: data.label_column is
    the one target."""
    columns: list[str] | None = None
    """Headerless CSV/TSV files: the names of their columns in order (e.g. [text, label]); the first line is then a
    row of data. null: the first line is the header. JSON, Parquet and saved datasets name their own columns."""
    encoding: str = "utf-8"
    """The text encoding of CSV, TSV, JSON and .txt files, e.g. latin-1 or cp1252; utf-8 also reads a leading
    byte-order mark."""
    delimiter: str | None = None
    """CSV/TSV: the one character between fields, e.g. `;` or `|`; null: `,` for .csv files, a tab for .tsv."""
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    """Fractions (train, validation, test) used to carve the splits that are not given as files."""
    leakage: Literal["error", "warn", "drop"] = "error"
    """What to do when a text of validation/test also occurs in another split."""
    normalize_labels: bool = False
    """Merge labels that differ only by case or surrounding whitespace (`yes` / `Yes `)."""
    group_by_length: bool = True
    """Batch texts of similar length together (seeded) so little compute goes to padding."""
    image_size: PositiveInt | tuple[PositiveInt, PositiveInt] | None = None
    """Images: the model's input size, an int or [h, w]; Hugging Face models default to their image processor's."""
    mean: tuple[float, float, float] | None = None
    """Images: per-channel normalisation; Hugging Face models default to their image processor's."""
    std: tuple[float, float, float] | None = None
    prompt_column: str = "prompt"
    """Causal LMs: the instruction column (with response_column), unless the rows hold chat messages."""
    response_column: str = "response"
    messages_column: str = "messages"
    """Causal LMs: a column of chat messages [{role: system|user|assistant, content: ...}], used when present."""
    system: str | None = None
    """Causal LMs: a system prompt put before every example that has none."""
    packing: bool = False
    """Causal LMs: each batch becomes one row of its examples back to back, positions restarting and no attention
    across examples (no padding at all)."""
    tokens_column: str = "tokens"
    """Token classification, JSON/Parquet rows: the column of each sentence's list of tokens (words)."""
    tags_column: str = "tags"
    """Token classification, JSON/Parquet rows: the column of each sentence's list of BIO tags, one per token."""
    tag_column: int = -1
    """Token classification, CoNLL-style files: the column of the tag (0 is the token; -1: the last column)."""
    label_all_subtokens: bool = False
    """Token classification: train on every sub-word of a word (a B- tag's later pieces get its I- tag), not only
    on its first; evaluation and prediction read the first sub-word either way."""
    image_column: str = "image"
    """Images listed in a CSV/JSON/Parquet file: the column of image paths (relative to that file's folder)."""
    bad_images: Literal["error", "skip"] = "error"
    """An unreadable or truncated image file: stop and list them, or leave them out and say how many."""
    review: Path | None = None
    """A CSV of a person's decisions on single examples (columns split, row, action: keep, drop or relabel, and
    label), applied as the data is read; the page of `graft inspect` exports one."""
    inspect: Literal["warn", "error", "off"] = "warn"
    """The data doctor's quick checks at the start of `graft train` (duplicates, conflicting labels, near-empty
    inputs, class balance): print a few lines (warn), stop the run when they find anything (error), or skip them."""
    augment: AugmentSpec = AugmentSpec()

    @field_validator("columns")
    @classmethod
    def _named_once(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v or any(not name.strip() for name in v):
                raise ValueError("must name every column of the headerless files, e.g. [text, label]")
            repeated = next((name for name in v if v.count(name) > 1), None)
            if repeated is not None:
                raise ValueError(f"names {repeated!r} twice; give each column its own name")
        return v

    @field_validator("label_columns")
    @classmethod
    def _labels_once(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v or any(not name.strip() for name in v):
                raise ValueError("must name the 0/1 column of every label, e.g. [sports, politics]")
            repeated = next((name for name in v if v.count(name) > 1), None)
            if repeated is not None:
                raise ValueError(f"names {repeated!r} twice; give each label column once")
        return v

    @field_validator("label_delimiter")
    @classmethod
    def _some_delimiter(cls, v: str) -> str:
        if not v or "\n" in v or "\r" in v:
            raise ValueError('must be one or more characters other than a line break, e.g. "," or "|"')
        return v

    @field_validator("target_columns")
    @classmethod
    def _targets_named_once(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or len(set(v)) != len(v) or any(not name.strip() for name in v)):
            raise ValueError("must name each target column once, e.g. [valence, arousal]")
        return v

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError("not an encoding Python knows; e.g. utf-8, latin-1, cp1252") from None
        return v

    @field_validator("delimiter")
    @classmethod
    def _one_character(cls, v: str | None) -> str | None:
        if v is not None and (len(v) != 1 or v in "\"\r\n"):
            raise ValueError('must be one character other than a quote or a line break, e.g. ";", "|" or "\\t"')
        return v

    @field_validator("split")
    @classmethod
    def _fractions_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in v) or abs(sum(v) - 1.0) > 1e-6 or v[0] <= 0:
            raise ValueError("must be three non-negative fractions (train, validation, test) summing to 1")
        return v


def _data_field(data: DataSpec, path: str) -> Any:
    """A data.* field by its dotted path (`augment.hflip`)."""
    return reduce(getattr, path.split("."), data)


_TASK_DATA_FIELDS = frozenset().union(*(t.data_fields for t in TASKS.values()))
"""data.* fields that some task reads and another does not."""
_DATA_DEFAULTS = {name: _data_field(DataSpec.model_construct(), name) for name in _TASK_DATA_FIELDS}


PEFT_METHODS = ("lora", "ia3", "prompt", "ptuning", "prefix", "adapter")
"""Parameter-efficient strategies: the pretrained weights stay as they are; small added parameters and the head
train (see graft.strategy.peft)."""
STRATEGIES = ("full", "discriminative", "head_only", "freeze", "two_phase", "gradual_unfreeze", "scratch", "distill",
              *PEFT_METHODS)
DISCRIMINATIVE = ("discriminative", "two_phase", "gradual_unfreeze")
"""Strategies whose learning rates differ per layer group unless the recipe says otherwise."""


class LoraSpec(Section):
    """`lora`: a low-rank update B·A added to each target layer (Linear or Conv2d), through peft."""

    r: PositiveInt = 8
    alpha: Annotated[float, Field(gt=0)] = 16.0
    """The update is scaled by alpha / r (alpha / sqrt(r) with use_rslora)."""
    dropout: Fraction = 0.05
    target_modules: list[str] | str | None = None
    """Module names (a name matches modules ending in it) or one regex over full module names; null: the
    attention projections peft knows for the architecture, else every Linear and Conv2d outside the head."""
    bias: Literal["none", "all", "lora_only"] = "none"
    use_dora: bool = False
    """DoRA: learn a magnitude per output and the direction by LoRA."""
    use_rslora: bool = False
    """rsLoRA: scale by alpha / sqrt(r), which keeps large ranks stable."""


class IA3Spec(Section):
    """`ia3`: learned per-channel scaling of keys, values and feed-forward activations, through peft."""

    target_modules: list[str] | str | None = None
    """null: what peft knows for the architecture, else every Linear and Conv2d outside the head."""
    feedforward_modules: list[str] | str | None = None
    """Targets whose input (not output) is scaled; null: peft's choice, else the same as target_modules."""


class PromptSpec(Section):
    """`prompt` (prompt tuning), `ptuning` (P-tuning: prompts from a small encoder) and `prefix` (prefix tuning:
    learned keys and values in every attention layer): virtual tokens, for text transformers."""

    num_virtual_tokens: PositiveInt = 20
    encoder_hidden_size: PositiveInt = 128
    """`ptuning`: the hidden size of the prompt encoder."""


class AdapterSpec(Section):
    """`adapter`: bottleneck adapters in each transformer block (down-projection, non-linearity, up-projection
    initialised at zero, residual), graft's own."""

    kind: Literal["houlsby", "pfeiffer"] = "houlsby"
    """houlsby: after the attention output and after the feed-forward block; pfeiffer: after the feed-forward only."""
    reduction: PositiveInt = 16
    """Bottleneck width = hidden size / reduction."""
    non_linearity: Literal["relu", "gelu", "tanh"] = "relu"
    train_norms: bool = True
    """Also train the LayerNorms (as Houlsby et al. do)."""


TEACHER_MODEL = "teacher"
"""model.name under strategy.distill.layers: the student is cut from the teacher's final model."""


class DistillationSpec(Section):
    """`distill`: the student learns (1 - weight) * the task's loss + weight * T^2 * KL(teacher_T || student_T), the
    teacher (strategy.teacher, frozen, in eval mode) run on the same batch. Teacher and student read the same token
    ids, so they must share a tokenizer vocabulary."""

    temperature: Annotated[float, Field(gt=0)] = 2.0
    """T: both distributions are softened by it; the T^2 factor keeps the gradient's scale independent of T."""
    weight: Annotated[float, Field(ge=0, le=1)] = 0.5
    """The KL's share of the loss; the labels' cross-entropy gets the rest (1: the teacher alone teaches)."""
    layers: PositiveInt | None = None
    """The student is the teacher's own architecture with this many encoder layers, initialised from the teacher:
    its embeddings, its first `layers` layers, its pooling and its fine-tuned head (BERT-like encoders: MiniLM, BERT,
    RoBERTa). Leave model.name out (or `teacher`). null: the student is model.name."""
    unlabelled: DataSource | None = None
    """Texts without labels (a table with data.text_column, or a .txt of one text per line) mixed into every
    training batch, where only the KL to the teacher teaches the student."""
    unlabelled_share: Annotated[float, Field(gt=0, lt=1)] = 0.5
    """The share of each training batch drawn from `unlabelled` (at least one example, at most all but one)."""


class StrategySpec(Section):
    name: Literal[STRATEGIES] = "full"  # type: ignore[valid-type]
    """What learns: `full` every parameter; `discriminative` every parameter, at per-group LRs; `head_only` the new
    head; `freeze` all but what freeze_* selects; `two_phase` the head for phase_epochs, then more; `gradual_unfreeze`
    one more group every unfreeze_every epochs, top down; `scratch` every parameter from a random initialisation;
    `distill` every parameter of a student taught by strategy.teacher as well as by the labels."""
    freeze_modules: list[str] = []
    """Module names to keep frozen with everything inside them (as in named_modules(): `bert.embeddings`, `layer1`)."""
    freeze_pattern: str | None = None
    """A regex: parameters whose name it matches stay frozen."""
    freeze_children: Annotated[int, Field(ge=0)] | None = None
    """Keep the first N children of the backbone frozen (HF: of the base model, e.g. bert.embeddings)."""
    freeze_groups: Annotated[int, Field(ge=0)] | None = None
    """Keep the first N layer groups frozen (see the group table a run prints)."""
    phase_epochs: PositiveInt = 1
    """`two_phase`: epochs that train the head alone."""
    unfreeze_groups: PositiveInt | None = None
    """`two_phase`: how many backbone groups, from the top, join after the first phase; null: all."""
    unfreeze_every: PositiveInt | Literal["auto"] = "auto"
    """`gradual_unfreeze`: epochs between unfreezing one more group. auto: one when the run has an epoch for every
    group to join before its last (a whole multiple in longer runs); in a shorter run the groups join in even
    batches so that every group trains in the last epoch (3 epochs, 7 groups: the head alone, then the top 3 join,
    then all)."""
    head_lr_mult: Annotated[float, Field(gt=0)] | None = None
    """The head's LR as a multiple of optim.lr; null: 10 for discriminative, two_phase, gradual_unfreeze, else 1."""
    lr_decay: Annotated[float, Field(ge=1)] | None = None
    """Each backbone group below the top trains at the LR of the one above divided by this; null: for
    discriminative, two_phase and gradual_unfreeze the rate that puts the bottom group at a tenth of the top one
    (10^(1/(n-1)) over n backbone groups: 1.47 for MiniLM's 7, 2.15 for a ResNet's 4; ULMFiT's fixed 2.6 starves
    the bottom of a deep stack, 2.6^6 ≈ 300× slower, and lost 1-2 points held out), else 1 (one LR for the whole
    backbone)."""
    feature_cache: bool = True
    """When the whole backbone stays frozen for the run, compute its outputs once and train the head on them."""
    probe: Literal["exact", "sgd"] = "exact"
    """A head that is one linear map on cached features (head_only): exact fits it as the logistic regression it is
    (L-BFGS to convergence, its L2 strength picked on validation; no epochs, no LR); sgd trains it by the loop."""
    lora: LoraSpec = LoraSpec()
    ia3: IA3Spec = IA3Spec()
    prompt: PromptSpec = PromptSpec()
    """Settings of `prompt`, `ptuning` and `prefix`."""
    adapter: AdapterSpec = AdapterSpec()
    teacher: Path | None = None
    """`distill`: the run directory of a finished graft run of the same task and labels, whose final model teaches."""
    distill: DistillationSpec = DistillationSpec()

    @property
    def is_peft(self) -> bool:
        return self.name in PEFT_METHODS

    @model_validator(mode="after")
    def _resolve(self) -> StrategySpec:
        per_group = self.name in DISCRIMINATIVE
        if self.head_lr_mult is None:
            self.head_lr_mult = 10.0 if per_group else 1.0
        if self.lr_decay is None and not per_group:  # per-group strategies: set by the plan, from the group count
            self.lr_decay = 1.0
        if self.name == "freeze" and not self.freezes_anything:
            raise ValueError("strategy.name = 'freeze' needs one of freeze_modules, freeze_pattern, freeze_children "
                             "or freeze_groups")
        if (self.name == "distill") != (self.teacher is not None):
            raise ValueError("strategy.teacher: the run directory of a finished graft run, for strategy.name: distill "
                             "(and only for it)" if self.teacher is None else
                             f"strategy.teacher: only strategy.name: distill learns from a teacher, not "
                             f"{self.name!r}; set strategy.name: distill or remove strategy.teacher")
        if self.is_peft and self.freezes_anything:
            raise ValueError(f"strategy.freeze_*: '{self.name}' already keeps every pretrained weight frozen; "
                             f"remove the freeze_* fields")
        return self

    @property
    def freezes_anything(self) -> bool:
        return bool(self.freeze_modules or self.freeze_pattern or self.freeze_children or self.freeze_groups)


class OptimSpec(Section):
    name: Literal["auto", "adamw", "adam", "sgd"] = "auto"
    """auto: SGD with momentum for a BatchNorm CNN (no LayerNorm), AdamW for the rest (transformers)."""
    lr: Annotated[float, Field(gt=0)] | Literal["auto"] = "auto"
    """The base learning rate (per-group scales multiply it); auto: measured by an LR range test at the start of
    the run (see `graft lr-find`)."""
    weight_decay: Annotated[float, Field(ge=0)] | None = None
    """Applied to weights only: never to biases and normalisation parameters. null: 0.01 for AdamW and Adam,
    5e-4 for SGD (an L2 penalty there)."""
    betas: tuple[float, float] = (0.9, 0.999)
    eps: Annotated[float, Field(gt=0)] = 1.0e-8
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    """SGD only."""
    nesterov: bool = False


class ScheduleSpec(Section):
    name: Literal["constant", "linear", "cosine", "step", "plateau"] = "linear"
    warmup_ratio: Fraction = 0.1
    """Share of the optimiser steps spent warming up linearly from 0; ignored by `plateau`."""
    warmup_steps: Annotated[int, Field(ge=0)] | None = None
    """Overrides warmup_ratio when set."""
    step_epochs: PositiveInt = 1
    """`step`: multiply the LR by `gamma` every this many epochs."""
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1
    """`step`: the decay factor."""
    plateau_factor: Annotated[float, Field(gt=0, lt=1)] = 0.1
    """`plateau`: multiply the LR by this when the eval metric has not improved for `plateau_patience` evals."""
    plateau_patience: Annotated[int, Field(ge=0)] = 1
    min_lr_ratio: Fraction = 0.0
    """`cosine`: the floor, as a share of the peak LR."""


class TrainSpec(Section):
    epochs: PositiveInt = 3
    max_steps: PositiveInt | None = None
    """Stop after this many optimiser steps (overrides epochs for the schedule's length)."""
    batch_size: PositiveInt = 32
    """The global batch per optimiser micro-step, whatever the number of processes."""
    eval_batch_size: PositiveInt | None = None
    grad_accum: PositiveInt = 1
    max_grad_norm: Annotated[float, Field(gt=0)] | None = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 where the hardware computes it natively (CPU AMX or AVX-512 BF16, GPU compute capability >= 8),
    else fp32; bf16 autocast on CPU or GPU; fp16 (with loss scaling) on GPU only. The output layer stays fp32."""
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    log_every: PositiveInt = 10
    """Log the training loss and LR every this many optimiser steps."""
    num_workers: Annotated[int, Field(ge=0)] = 0
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute (HF models)."""

    @property
    def eval_batch(self) -> int:
        return self.eval_batch_size or self.batch_size


class EvalSpec(Section):
    every_steps: PositiveInt | None = None
    """Evaluate on validation every this many optimiser steps; null: at the end of every epoch."""
    metric: MetricName | None = None
    """The validation metric that picks the best model and drives early stopping and `plateau`; null: f1_macro for
    classifiers, loss for causal language models, rmse for regression."""
    mode: Literal["auto", "min", "max"] = "auto"
    """auto: min for losses and errors (loss, perplexity, ece, nll, brier, mse, rmse, mae), max for the rest."""
    patience: PositiveInt | None = None
    """Stop after this many evaluations without improvement; null: never stop early."""
    min_delta: Annotated[float, Field(ge=0)] = 0.0
    """An improvement smaller than this does not count."""
    samples: Annotated[int, Field(ge=0)] = 3
    """Causal LMs: how many validation prompts get a sample generation (greedy) in run.json and the report."""
    max_new_tokens: PositiveInt = 64
    """Causal LMs: the longest sample generation (and `graft predict` answer)."""

    @property
    def resolved_mode(self) -> Literal["min", "max"]:
        return self.mode if self.mode != "auto" else metric_mode(self.metric)  # type: ignore[return-value]


class LossSpec(Section):
    class_weights: Literal["auto", "none"] | dict[str, Annotated[float, Field(gt=0)]] = "auto"
    """Classifiers: weight each class's examples in the training loss. auto: when the largest class of data.train
    has 1.5 times the examples of the smallest or more, inversely to each class's share (n / (k * count), as
    scikit-learn's "balanced"), else no weighting; none; or {label: weight}. Evaluation losses are never weighted."""


class CheckpointSpec(Section):
    every_steps: PositiveInt | None = None
    """Save a resumable checkpoint every this many optimiser steps; null: at each evaluation."""
    keep_last: PositiveInt = 1
    """How many resumable checkpoints to keep (the best model is kept apart)."""


TRACKER_NAMES = ("tensorboard", "mlflow", "wandb")


class OutputSpec(Section):
    """Where the run is written, who else sees its metrics, and how progress shows."""

    dir: Path = Path("runs/example")
    trackers: list[Literal[TRACKER_NAMES]] = ["tensorboard"]  # type: ignore[valid-type]
    """Where train, validation and test metrics go besides metrics.jsonl (through accelerate's trackers; the recipe
    goes too, as mlflow params and wandb config). tensorboard: <dir>/tensorboard. mlflow: MLFLOW_TRACKING_URI, else
    <dir>/mlflow.db (SQLite: `mlflow ui --backend-store-uri sqlite:///<dir>/mlflow.db`). wandb: into <dir>/wandb
    (or WANDB_DIR), online when an API key is set up (WANDB_API_KEY or `wandb login`), else offline (`wandb sync`
    uploads it later); WANDB_MODE overrides. A single name is a list of one; [] logs to metrics.jsonl only."""
    tensorboard: bool | None = Field(None, exclude=True)
    """The older switch, folded into `trackers`: without `trackers`, true is [tensorboard] and false is []; beside
    `trackers`, it must agree with them. Not written back: the run's recipe.yaml holds `trackers` only."""
    progress_every_s: Annotated[float, Field(gt=0)] | None = 30.0
    """Where stderr is not a terminal (CI logs, nohup, notebooks), print a progress line (step/total, epoch, loss,
    examples/s, ETA) at most every this many seconds; on a terminal a progress bar redraws instead. null: no lines
    (evaluation results still print)."""

    @field_validator("trackers", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _fold_tensorboard(self) -> OutputSpec:
        trackers = list(dict.fromkeys(self.trackers))
        if self.tensorboard is not None and "trackers" not in self.model_fields_set:
            trackers = ["tensorboard"] if self.tensorboard else []
        elif self.tensorboard is not None and self.tensorboard != ("tensorboard" in trackers):
            raise ValueError(f"output.tensorboard: {str(self.tensorboard).lower()} contradicts output.trackers "
                             f"{trackers}; say it once, in output.trackers (output.tensorboard is the older switch)")
        if trackers != self.trackers:  # assignment validates again; unchanged, it stops there
            self.trackers = trackers
        return self


GUARDS = ("distill", "replay", "l2sp", "ewc")
"""Forgetting guards (graft.retention.guards), in the order their loss terms are added."""


class ReplaySpec(Section):
    """`replay`: a share of every training batch is source data, trained through the source head."""

    share: Annotated[float, Field(gt=0, lt=1)] = 0.25
    """The share of each batch drawn from retention.data (at least one example, at most all but one)."""
    weight: Annotated[float, Field(gt=0)] = 1.0
    """The replayed examples' cross-entropy is added to the loss times this."""


class DistillSpec(Section):
    """`distill` (learning without forgetting): the original model, frozen, is the teacher of the source head's
    outputs on the new task's own inputs (the same augmented batch, in the same step)."""

    weight: Annotated[float, Field(gt=0)] = 1.0
    """alpha: the KL divergence (scaled by T^2) is added to the loss times this."""
    temperature: Annotated[float, Field(gt=0)] = 2.0
    """T: both distributions are softened by it; the T^2 factor keeps the gradient's scale independent of T."""


class L2SPSpec(Section):
    """`l2sp`: weight/2 * |w - w0|^2 pulls every trained pretrained weight to its start w0; the new head gets plain L2
    (head_weight/2 * |w|^2). It replaces the optimiser's weight decay, which would pull the same weights to zero."""

    weight: Annotated[float, Field(ge=0)] = 0.1
    """alpha, as Li et al. 2018 (Explicit inductive bias for transfer learning with CNNs) use for full fine-tuning."""
    head_weight: Annotated[float, Field(ge=0)] = 0.01
    """beta: plain L2 on the new head's weights (not its biases)."""


class EWCSpec(Section):
    """`ewc`: weight/2 * sum F (w - w0)^2, F the diagonal Fisher information of the source head's predictions on
    retention.data at the start weights, from per-example gradients; computed once and kept in the run directory."""

    weight: Annotated[float, Field(ge=0)] = 100.0
    """lambda: how hard weights the source task depends on are held."""
    examples: PositiveInt = 1000
    """At most this many source examples (the first ones) estimate F."""


class RetentionSpec(Section):
    """Forgetting, measured and guarded: the source head (the pretrained output layer, kept beside the new head; a
    probe on the original features when nothing names its classes) is scored on held-out `data` before training, at
    every evaluation and at the end; retention = after / before (a causal LM: perplexity before / after)."""

    data: DataSource | None = None
    """Source-task examples labelled in the source head's classes (model.source_labels, or a Hugging Face model's
    own id2label), a file or an image folder read with data.*_column; a causal LM's retain conversations, read as
    its data is. null: retention is not measured."""
    guard: list[Literal[GUARDS]] = []  # type: ignore[valid-type]
    """What guards the old skill while the new one is learnt: none, or one or more of replay, distill, l2sp, ewc."""
    measure_share: Annotated[float, Field(gt=0, le=1)] = 0.5
    """The share of retention.data held out to measure retention on (stratified, seeded by train.seed); the rest is
    what replay draws from, EWC's Fisher information and a probe are computed on. Measured on examples no guard saw,
    a guard cannot look better by having memorised them."""
    freeze_bn: bool = False
    """Keep the backbone's BatchNorm statistics as they were (BatchNorm runs in eval mode throughout): statistics
    that follow the new data forget the old on their own."""
    replay: ReplaySpec = ReplaySpec()
    distill: DistillSpec = DistillSpec()
    l2sp: L2SPSpec = L2SPSpec()
    ewc: EWCSpec = EWCSpec()

    @field_validator("guard", mode="before")
    @classmethod
    def _none_or_names(cls, value: Any) -> Any:
        if value is None or value == "none":
            return []
        names = [value] if isinstance(value, str) else value
        return list(dict.fromkeys(names)) if isinstance(names, list) else names

    @model_validator(mode="after")
    def _needs_data(self) -> RetentionSpec:
        if self.data is None and (self.guard or self.freeze_bn):
            what = f"guard {', '.join(self.guard)}" if self.guard else "freeze_bn"
            raise ValueError(f"retention.{'guard' if self.guard else 'freeze_bn'}: {what} keeps what the model knew "
                             f"of its source task, which retention.data must give (examples labelled in the source "
                             f"head's classes); set retention.data, or remove it")
        using = [g for g in self.guard if g in ("replay", "ewc")]
        if using and self.measure_share == 1:
            raise ValueError(f"retention.measure_share = 1 holds every source example out to measure on, and "
                             f"{' and '.join(using)} would see none of them; lower it (0.5: half each)")
        return self

    @property
    def on(self) -> bool:
        return self.data is not None


class Recipe(Section):
    """Everything a run needs. Only `data.train` has no default."""

    task: Literal[tuple(TASKS)] = "text_classification"  # type: ignore[valid-type]
    model: ModelSpec = ModelSpec()
    data: DataSpec
    strategy: StrategySpec = StrategySpec()
    optim: OptimSpec = OptimSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    loss: LossSpec = LossSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    output: OutputSpec = OutputSpec()
    retention: RetentionSpec = RetentionSpec()

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.schedule.name == "plateau" and self.schedule.warmup_steps:
            raise ValueError("schedule.warmup_steps: `plateau` has no warmup; set it to null or pick another schedule")
        if self.model.checkpoint is not None and not self.model.is_factory:
            raise ValueError("model.checkpoint: only for a factory-built module (model.name: package.module:function);"
                             " a Hugging Face model directory brings its own weights")
        if self.model.is_factory and self.train.gradient_checkpointing:
            raise ValueError("train.gradient_checkpointing: for Hugging Face models; a plain module checkpoints in its "
                             "own forward")
        if not self.model.is_factory and (self.model.head.pool != "none" or self.model.head.input_from):
            raise ValueError("model.head.pool / input_from: Hugging Face models pool their own features; declare "
                             "batchnorm, dropout or hidden only, or use a plain module")
        self._check_task()
        self._check_retention()
        self._check_student()
        return self

    def _check_student(self) -> None:
        """distill.layers: model.name becomes the teacher's final model (left out, or `teacher`); another is
        refused."""
        strategy = self.strategy
        if strategy.teacher is not None and self.retention.on:
            raise ValueError("retention: a distilled student has no pretrained skill of its own to retain; remove the "
                             "retention section")
        if strategy.distill.unlabelled is not None and self.train.batch_size < 2:
            raise ValueError("strategy.distill.unlabelled shares each batch with unlabelled texts; train.batch_size "
                             "must be 2 or more")
        if strategy.teacher is not None and strategy.distill.layers is None and self.model.name == TEACHER_MODEL:
            raise ValueError("model.name = 'teacher': a student cut from the teacher needs strategy.distill.layers "
                             "(how many of its layers to keep)")
        if strategy.teacher is None or strategy.distill.layers is None:
            return
        cut_from = str(strategy.teacher / "model")
        given = self.model.name if "name" in self.model.model_fields_set else TEACHER_MODEL
        if given not in (TEACHER_MODEL, cut_from):
            raise ValueError(f"model.name = {given!r}: strategy.distill.layers cuts the student from the teacher; "
                             f"leave model.name out (or write teacher), or remove distill.layers to distil into "
                             f"{given!r}")
        if self.model.name != cut_from:
            self.model.name = cut_from

    def _check_task(self) -> None:
        """What the task takes: its own data fields, its metrics, the strategies and models it can train."""
        task = TASKS[self.task]
        foreign = [f for f in _TASK_DATA_FIELDS - task.data_fields if _data_field(self.data, f) != _DATA_DEFAULTS[f]]
        if foreign:
            owners = [t.name for t in TASKS.values() if foreign[0] in t.data_fields]
            raise ValueError(f"data.{foreign[0]}: {self.task} does not read it (it is for {' and '.join(owners)}); "
                             f"remove it")
        if self.model.is_factory and not task.takes_plain_modules:
            takers = [t.name for t in TASKS.values() if t.takes_plain_modules]
            raise ValueError(f"model.name: plain nn.Module factories are for task: {', '.join(takers)}")
        reason = task.refused_strategies.get(self.strategy.name)
        if reason:
            raise ValueError(f"strategy.name = '{self.strategy.name}': {reason}")
        if self.eval.metric is None:
            self.eval.metric = task.default_metric
        if self.eval.metric not in task.metrics:
            raise ValueError(f"eval.metric = {self.eval.metric!r}: {self.task} is scored by {', '.join(task.metrics)}")
        task.check_recipe(self)

    def _check_retention(self) -> None:
        """What measuring and guarding the source task needs: a pretrained head that can be kept, and known."""
        if not self.retention.on:
            return
        model, why = self.model, None
        if self.strategy.name == "scratch":
            why = "a scratch run starts from random weights: there is no pretrained skill to retain"
        elif model.is_factory and model.checkpoint is None:
            why = "a factory-built module without model.checkpoint has no pretrained head to keep"
        elif model.head.input_from:
            why = (f"model.head.input_from feeds the new head from {model.head.input_from!r}, so nothing runs what "
                   f"the source head read; remove input_from")
        if why:
            raise ValueError(f"retention: {why}")
        if self.retention.guard and self.strategy.name == "head_only":
            raise ValueError("retention.guard: strategy head_only trains no pretrained weight, so nothing can be "
                             "forgotten; set retention.guard: none (retention is still measured)")
        if "ewc" in self.retention.guard and TASKS[self.task].input_kind is None:  # a language model
            raise ValueError("retention.guard: ewc's Fisher information is exact over a classifier's classes; over a "
                             "language model's vocabulary it is out of reach: use l2sp, distill or replay")
        if "replay" in self.retention.guard and self.train.batch_size < 2:
            raise ValueError("retention.guard: replay shares each batch with source examples; train.batch_size "
                             "must be 2 or more")

    def dump(self) -> dict[str, Any]:
        """The resolved recipe as plain YAML/JSON-ready data."""
        return self.model_dump(mode="json")

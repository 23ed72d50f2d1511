"""Causal language models on instructions: prompt/response or chat messages, the loss on the answers only, scored
by loss, perplexity and token accuracy, with sample generations in the record. The torch side is
`graft.tasks.chat`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from graft.evaluation.metrics import LM_METRICS

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn
    from torch.utils.data import DataLoader

    from graft.models.build import LoadedModel, TrainedModel
    from graft.recipe import DataSpec, ModelSpec, Recipe


def answer_tokens(batch: dict[str, Any]) -> int:
    """The tokens a batch's loss averages over: the labelled ones after the first position (each is predicted from
    those before it; -100 marks prompts and padding)."""
    return int((batch["labels"][:, 1:] != -100).sum())


class CausalLM:
    name = "causal_lm"
    pipeline_tag = "text-generation"
    data_fields = frozenset({"prompt_column", "response_column", "messages_column", "system", "packing",
                             "group_by_length"})
    metrics = LM_METRICS
    default_metric = "loss"
    refused_strategies: ClassVar[dict[str, str]] = {
        "head_only": "a causal LM keeps its pretrained output layer, so there is no new head to train alone; use lora, "
                     "prompt, prefix, freeze or full",
        "distill": "teacher -> student distillation is for text classifiers (a teacher's class probabilities); "
                   "fine-tune the smaller language model with full or lora"}
    refused_commands: ClassVar[dict[str, str]] = {}
    peft_task_type = "CAUSAL_LM"
    input_kind = None
    loss_units = staticmethod(answer_tokens)
    export_metrics: tuple[str, ...] = ()  # no ONNX export: generation is a loop one graph of logits does not hold
    onnx_decode: tuple[str, ...] = ()
    takes_plain_modules = False
    single_label = False
    feature_cache = True

    def check_recipe(self, recipe: Recipe) -> None:
        if recipe.model.pooling != "auto":
            raise ValueError("model.pooling: for text classifiers; a language model predicts every next token")
        if isinstance(recipe.loss.class_weights, dict):
            raise ValueError("loss.class_weights: for classifiers; a language model's loss is over tokens")

    def loss(self, recipe: Recipe, splits: Any) -> tuple[None, dict[str, Any]]:
        return None, {}

    def load_splits(self, recipe: Recipe) -> Any:
        from graft.data.instructions import load_instruction_splits

        d = recipe.data
        return load_instruction_splits(d.train, d.validation, d.test, data=d, split=d.split, seed=recipe.train.seed)

    def read_labelled(self, recipe: Recipe, path: Path, labels: list[str]) -> Any:
        from graft.data.instructions import read_conversations
        from graft.data.tables import source_name

        return read_conversations(path, source_name(path), recipe.data)

    def read_examples(self, recipe: Recipe) -> list[list[dict[str, str]]]:
        """data.train's conversations (the system prompt in each), each once (one in two folds would be leakage)."""
        import json

        from graft.data.instructions import read_conversations
        from graft.data.sources import locate_splits
        from graft.data.tables import source_name

        train = locate_splits(recipe.data.train, None, None)[0]["train"]
        first: dict[str, list[dict[str, str]]] = {}
        for messages in read_conversations(train, source_name(train), recipe.data):
            first.setdefault(json.dumps(messages, sort_keys=True), messages)
        return list(first.values())

    def rows(self, split: Any, labels: list[str]) -> list[list[dict[str, str]]]:
        return list(split)

    def write_examples(self, folder: Path, name: str, rows: list[Any], recipe: Recipe) -> Path:
        """Conversations as chat messages in JSON lines (the system prompt already in each)."""
        from graft.data.tables import write_jsonl

        return write_jsonl(folder / f"{name}.jsonl", [{"messages": messages} for messages in rows])

    def written_fields(self, recipe: Recipe) -> dict[str, Any]:
        from graft.data.tables import WRITTEN

        return {"messages_column": "messages", **WRITTEN}

    def fold_groups(self, examples: list[Any]) -> None:
        """None: folds are a seeded shuffle of conversations."""
        return None

    def load_model(self, spec: ModelSpec, labels: list[str], data: DataSpec, scratch: bool) -> LoadedModel:
        """The pretrained output layer is kept (no new head); the tokenizer gets what instructions need."""
        from graft.models.build import load_causal_lm
        from graft.tasks.chat import prepare_tokenizer

        loaded = load_causal_lm(spec, scratch)
        loaded.notes[:0] = prepare_tokenizer(loaded.processor)
        loaded.model.config.use_cache = False  # a cache in training also turns off packed attention masks
        return loaded

    def load_trained(self, folder: Path, data: DataSpec | None) -> TrainedModel:
        from graft.models.build import load_trained_classifier
        from graft.tasks.chat import prepare_tokenizer

        trained = load_trained_classifier(folder, "AutoModelForCausalLM", "tokenizer")
        prepare_tokenizer(trained.processor)  # the saved tokenizer has its template; pad/eos as in training
        trained.labels = []
        return trained

    def trained_labels(self, model: Any, labels: list[str]) -> Any:
        return labels

    def score_logits(self, logits: Any, truth: Any, labels: Any, thresholds: dict[str, float] | None = None
                     ) -> dict[str, Any]:
        raise NotImplementedError("a language model is scored over its batches (evaluate), not by collected logits")

    def train_loader(self, recipe: Recipe, split: Any, loaded: LoadedModel, augment: bool,
                     notes: list[str]) -> DataLoader:
        from graft.tasks import chat

        t = recipe.train
        encoded = _encoded(recipe, split, loaded.processor, notes, "train")
        return chat.train_loader(encoded, loaded.processor.pad_token_id, t.batch_size, t.seed,
                                 recipe.data.group_by_length, recipe.data.packing, t.num_workers)

    def eval_loader(self, recipe: Recipe, split: Any, model: Any, notes: list[str] | None = None,
                    name: str = "test") -> DataLoader:
        from graft.tasks import chat

        encoded = _encoded(recipe, split, model.processor, notes if notes is not None else [], name)
        return chat.eval_loader(encoded, model.processor.pad_token_id, recipe.train.eval_batch,
                                recipe.train.num_workers)

    def evaluate(self, accelerator: Accelerator, model: nn.Module, loader: DataLoader,
                 labels: list[str]) -> dict[str, Any]:
        from graft.tasks.chat import evaluate_lm

        return evaluate_lm(accelerator, model, loader)

    def finish_model(self, accelerator: Accelerator, model: nn.Module, splits: Any, loaded: LoadedModel) -> None:
        pass

    def test(self, accelerator: Accelerator, model: nn.Module, loader: DataLoader, splits: Any,
             loaded: LoadedModel, recipe: Recipe) -> tuple[dict[str, Any], dict[str, Any]]:
        """Test metrics, and greedy answers to the first few validation prompts (main process)."""
        from graft.tasks.chat import evaluate_lm, generate

        loaded.model.config.use_cache = True  # what the saved model generates with
        metrics = evaluate_lm(accelerator, model, loader)
        unwrapped = accelerator.unwrap_model(model)
        samples = []
        if recipe.eval.samples and hasattr(unwrapped, "generate") and accelerator.is_main_process:
            samples = generate(unwrapped, loaded.processor, splits.validation[: recipe.eval.samples],
                               recipe.eval.max_new_tokens)
        return metrics, {"samples": samples}

    def describe(self, splits: Any, loader: DataLoader) -> tuple[str, dict[str, Any], list[str]]:
        from graft.tasks.chat import render

        rendered = render(loader.dataset.tokenizer, loader.dataset.conversations[0])
        shown = f"example 1 as the model sees it (the loss is on the assistant's turns only):\n{rendered}"
        return "instruction examples", {"rendered_example": rendered}, [shown]

    def predict(self, run: Any, source: str, batches: Any) -> tuple[list[dict[str, Any]], list[str]]:
        """Greedy answers to prompts: a table with the prompt (or messages) column, a .txt file or stdin with one
        prompt a line."""
        from graft.tasks.chat import generate

        _no_mc(run)
        conversations = _prompts(run.recipe.data, source)
        answers = generate(run.model, run.processor, conversations, run.recipe.eval.max_new_tokens)
        return [{"prompt": a["prompt"], "generated": a["generated"]} for a in answers], ["prompt", "generated"]

    def predict_inputs(self, run: Any, inputs: list[Any], logits: Any) -> tuple[list[dict[str, Any]], list[str]]:
        """Greedy answers to prompts (strings) or conversations (lists of {role, content}) held in memory."""
        from graft.data.instructions import with_system
        from graft.tasks.chat import generate

        _no_mc(run)
        conversations = with_system([_conversation(x, i) for i, x in enumerate(inputs)], run.recipe.data.system)
        answers = generate(run.model, run.processor, conversations, run.recipe.eval.max_new_tokens)
        return [{"prompt": a["prompt"], "generated": a["generated"]} for a in answers], ["prompt", "generated"]


def _no_mc(run: Any) -> None:
    from graft.errors import GraftError

    if run.mc_passes:
        raise GraftError("--mc-dropout: a language model's answers are generated text, with no class probabilities "
                         "to average; leave it out")


def _encoded(recipe: Recipe, conversations: list, tokenizer: Any, notes: list[str], name: str) -> Any:
    from graft.errors import GraftError
    from graft.tasks.chat import Encoded

    encoded = Encoded(conversations, tokenizer, recipe.model.max_length)
    if encoded.dropped:
        if not len(encoded):
            raise GraftError(f"data.{name}: every example's response lies beyond model.max_length = "
                             f"{recipe.model.max_length} tokens; raise it or shorten the prompts")
        notes.append(f"data.{name}: left out {encoded.dropped} example(s) whose response starts after "
                     f"model.max_length = {recipe.model.max_length} tokens (nothing to learn from); raise it to keep "
                     f"them")
    return encoded


def _conversation(given: Any, i: int) -> list[dict[str, str]]:
    from graft.data.instructions import ROLES
    from graft.errors import GraftError

    if isinstance(given, str):
        if not given.strip():
            raise GraftError(f"input {i + 1}: empty prompt; remove it or give the prompt")
        return [{"role": "user", "content": given}]
    messages = given if isinstance(given, list | tuple) and given else [given]
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise GraftError(f"input {i + 1}: a language model answers prompts (strings) or conversations (lists of "
                             f"{{'role': 'system'|'user'|'assistant', 'content': text}}), got {str(given)[:60]!r}; "
                             f"one conversation goes in a list of its own: predict([messages])")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _prompts(d: DataSpec, source: str) -> list[list[dict[str, str]]]:
    from graft.data.checks import require_column, text_values
    from graft.data.instructions import checked_messages, with_system
    from graft.data.tables import TableFormat, read_table, read_unlabelled_texts

    fmt = TableFormat.of(d)
    table = None if source == "-" or Path(source).suffix.lower() in (".txt", "") else read_table(Path(source), fmt)
    if table is not None and d.messages_column in table.column_names:
        rows = table.select_columns([d.messages_column]).to_dict()[d.messages_column]
        conversations = [checked_messages(m, source, i + 1, d.messages_column, need_answer=False)
                         for i, m in enumerate(rows)]
    else:
        if table is None:
            prompts = read_unlabelled_texts(source, text_column=d.prompt_column, fmt=fmt)
        else:
            require_column(table.column_names, d.prompt_column, Path(source).name, "data.prompt_column")
            prompts = text_values(table.select_columns([d.prompt_column]).to_dict()[d.prompt_column],
                                  Path(source).name, d.prompt_column)
        conversations = [[{"role": "user", "content": p}] for p in prompts]
    return with_system(conversations, d.system)

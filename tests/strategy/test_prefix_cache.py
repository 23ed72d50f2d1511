"""The partial feature cache: the frozen bottom groups run once, and training on their outputs gives what training
through them gives; where the cache cannot stand in for them, it stays off and says why."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import graft
from graft.models.groups import Group
from graft.recipe import load_recipe
from graft.training.prefix_cache import INDEX, PrefixCache, indexed
from tests.conftest import PLAIN_NETS, image_recipe, make_texts, tiny_recipe, write_csv
from tests.strategy.test_matrix import initial_state

NO_AUGMENT = {"crop_scale": None, "hflip": False, "translate": 0}


@pytest.fixture(scope="module")
def recipes(tmp_path_factory, tiny_bert, tiny_resnet, image_folder, plain_checkpoint):
    texts = write_csv(tmp_path_factory.mktemp("text") / "train.csv", make_texts(60, seed=5))
    cnn = {"name": f"{PLAIN_NETS}:small_cnn", "checkpoint": str(plain_checkpoint)}
    return {
        "tiny_bert": lambda run: tiny_recipe(tiny_bert, texts, run),  # dropout above the cache: same RNG draws
        "hf_resnet": lambda run: image_recipe({"name": str(tiny_resnet)}, image_folder, run,
                                              data={"augment": NO_AUGMENT}),
        "plain_cnn": lambda run: image_recipe(cnn, image_folder, run, data={"augment": NO_AUGMENT}),
    }


CASES = [
    ("tiny_bert", {"name": "freeze", "freeze_groups": 2}, [2]),  # embeddings and the first layer
    ("tiny_bert", {"name": "gradual_unfreeze", "unfreeze_every": 1}, [4, 3, 2]),  # rebuilt as groups unfreeze
    ("tiny_bert", {"name": "two_phase", "phase_epochs": 1, "unfreeze_groups": 1}, [4, 3]),
    ("hf_resnet", {"name": "freeze", "freeze_groups": 2}, [2]),  # the stem and the first stage
    ("plain_cnn", {"name": "freeze", "freeze_groups": 2}, [2]),  # conv1 and bn1: the forward's ReLU follows
]


@pytest.mark.parametrize(("family", "strategy", "depths"), CASES,
                         ids=[f"{f}-{s['name']}" for f, s, _ in CASES])
def test_cached_and_uncached_runs_agree(family, strategy, depths, recipes, tmp_path):
    records, weights = {}, {}
    for cache in (True, False):
        tree = recipes[family](tmp_path / f"cache-{cache}")
        tree["strategy"] = {**strategy, "feature_cache": cache}
        recipe = load_recipe(tree)
        state, _ = initial_state(recipe)
        initial = {k.removeprefix("net."): v for k, v in state.items()}
        records[cache] = graft.train(recipe)
        weights[cache] = load_file(str(tmp_path / f"cache-{cache}" / "model" / "model.safetensors"))
    builds = records[True]["strategy"]["prefix_cache"]
    assert [b["groups"] for b in builds] == depths and all(b["used"] for b in builds)
    assert "prefix_cache" not in records[False]["strategy"]
    assert weights[True].keys() == weights[False].keys()
    for key in weights[True]:
        torch.testing.assert_close(weights[True][key], weights[False][key], rtol=1e-4, atol=1e-5, msg=key)
    moved = {k for k in weights[True] if not torch.equal(weights[True][k], initial[k])}
    assert moved and moved != set(weights[True])  # the model trained above the cache, not below it
    for name in ("loss", "accuracy"):
        assert records[True]["metrics"]["test"][name] == pytest.approx(records[False]["metrics"]["test"][name],
                                                                     rel=1e-4, abs=1e-5)
    losses = [[h["loss"] for h in r["metrics"]["history"] if h["split"] == "train"] for r in records.values()]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_augmented_images_are_not_cached(recipes, tmp_path, capsys):
    tree = recipes["plain_cnn"](tmp_path / "run")
    tree["data"]["augment"] = {"hflip": True}
    tree["strategy"] = {"name": "freeze", "freeze_groups": 2}
    record = graft.train(load_recipe(tree))
    assert "prefix_cache" not in record["strategy"]
    assert "the training inputs are augmented" in capsys.readouterr().err


class Skip(nn.Module):
    """Its forward adds a frozen block's input to its output: the block cannot be cut out."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        y = self.a(x)
        return SimpleNamespace(logits=self.head(self.b(y) + y))


class Chain(Skip):
    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.head(self.b(self.a(x))))


class Rows(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": torch.arange(4.0) * i, "labels": torch.tensor(i % 2)}


@pytest.mark.parametrize(("net", "refused"), [(Chain, False), (Skip, True)])
def test_cache_proves_itself_before_it_is_used(net, refused):
    model = net()
    cache = PrefixCache(model, model, _no_autocast)
    loader = indexed(torch.utils.data.DataLoader(Rows(), batch_size=4), 0)
    reason = cache.build([Group("a", ["a.weight", "a.bias"]), Group("b", ["b.weight", "b.bias"])], [loader],
                         torch.device("cpu"))
    assert bool(reason) == refused and cache.depth == (0 if refused else 2)
    if refused:
        assert "does not reproduce" in reason
        return
    batch = next(iter(loader))
    with torch.no_grad():
        served = model(x=batch["x"], **{INDEX: batch[INDEX]}).logits
        plain = model(x=batch["x"]).logits
    torch.testing.assert_close(served, plain)
    assert isinstance(model.a, nn.Linear)  # the modules are back after the call
    cache.stored[0].values.add_(1.0)  # served from the cache, not recomputed
    with torch.no_grad():
        assert not torch.allclose(model(x=batch["x"], **{INDEX: batch[INDEX]}).logits, plain)


def _no_autocast():
    return torch.autocast("cpu", enabled=False)

"""The torch.export frontend, masks carried across cuts, sequence heads, and Hugging Face models."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import decouple
from decouple.objectives.losses import logits_of
from decouple.objectives.pools import FinalState, TokenMean, TokenSelect, last_valid_index

from .helpers import assert_gradient_isolation
from .models import InplaceAfterCut, ResCNN
from .text_models import (
    HF_CASES,
    TEXT_CASES,
    BiLSTMClassifier,
    TinyGPT,
    TransformerClassifier,
    hf_bert,
    hf_gpt2_lm,
    token_batch,
)  # fmt: skip

#: projection heads sized for the tiny test models (the default 512-1024 MLP dominates their cost)
SMALL_HEAD = (32, 32)


def _labels(n: int, classes: int = 3) -> torch.Tensor:
    return torch.arange(n) % classes


def _convert(case: Any, method: str = "scl", tracer: str = "auto", **kw: Any) -> decouple.DecoupledModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", decouple.TracerFallbackWarning)
        if method == "scl":
            kw.setdefault("head_dims", SMALL_HEAD)
        return decouple.convert(case.build(), method, case.splits, case.inputs(2), tracer=tracer, **kw)


_CONVERTED: dict[tuple[str, str], decouple.DecoupledModel] = {}


def _converted(name: str, tracer: str = "auto") -> decouple.DecoupledModel:
    """One scl conversion per model and tracer for the whole module (exporting takes seconds).

    Tests that use it may train it; what they check holds whatever the weights are.
    """
    if (name, tracer) not in _CONVERTED:
        torch.manual_seed(0)
        _CONVERTED[name, tracer] = _convert({**HF_CASES, **TEXT_CASES}[name], tracer=tracer)
    return _CONVERTED[name, tracer]


def _check_model(case: Any, dm: decouple.DecoupledModel, classes: int) -> None:
    """Inference equals the original in eval mode; isolation; a step; state loads into a fresh instance."""
    model = dm.program.root
    x = case.inputs(6)
    model.eval()
    dm.eval()
    with torch.no_grad():
        expected = model(**x)
        out = dm.inference_module()(**x)
        assert type(out) is type(expected)  # a ModelOutput stays a ModelOutput
        torch.testing.assert_close(logits_of(out), logits_of(expected))
        torch.testing.assert_close(logits_of(dm(**x)), logits_of(expected))
    dm.train()
    y = _labels(6, classes)
    losses = dm.train_step(**x, target=y)
    assert len(losses) == dm.num_stages and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert_gradient_isolation(dm, **x, target=y)
    fresh = case.build()
    fresh.load_state_dict(dm.effective_state_dict(), strict=True)
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits_of(fresh(**x)), logits_of(dm.inference_module()(**x)))
    assert dm.param_counts().inference == sum(p.numel() for p in fresh.parameters())


@pytest.mark.parametrize("name", sorted(HF_CASES))
def test_hugging_face_model_converts_through_export(name: str) -> None:
    case = HF_CASES[name]
    with pytest.warns(decouple.TracerFallbackWarning, match="using torch.export"):
        dm = _CONVERTED[name, "auto"] = decouple.convert(
            case.build(), "scl", case.splits, case.inputs(2), head_dims=SMALL_HEAD
        )
    part = dm.program.partitions[True]
    assert part.trace.frontend == "export"
    assert [s.spec for s in part.splits] == case.splits  # split names are module qualified names
    _check_model(case, dm, classes=3)


@pytest.mark.parametrize("tracer", ["fx", "export"])
@pytest.mark.parametrize("name", sorted(TEXT_CASES))
def test_paper_text_classifiers_in_four_stages(name: str, tracer: str) -> None:
    case = TEXT_CASES[name]
    dm = _converted(name, tracer)
    assert dm.num_stages == 4
    assert dm.program.partitions[True].trace.frontend == tracer
    assert [s.objective_extras for s in dm.stages[:-1]] == [{"mask": "attention_mask"}] * 3
    _check_model(case, dm, classes=2)


def test_fx_and_export_train_the_same() -> None:
    case = TEXT_CASES["transformer"]
    runs = []
    for tracer in ("fx", "export"):
        torch.manual_seed(0)
        dm = _convert(case, tracer=tracer)
        dm.eval()  # no dropout: both runs see the same computation
        x = case.inputs(6)
        runs.append([loss.item() for loss in dm.local_losses(**x, target=_labels(6, 2))])
    assert runs[0] == pytest.approx(runs[1], abs=1e-5)


def test_export_dynamic_batch_and_fixed_dims_are_checked() -> None:
    dm = _converted("lstm", "export")
    x = token_batch(5, t=8, vocab=40)
    dm.train_step(ids=x["input_ids"], attention_mask=x["attention_mask"], target=_labels(5, 2))  # batch 5, traced at 2
    longer = token_batch(5, t=12, vocab=40)
    with pytest.raises(decouple.InputError, match="'ids'.*fixed dim 1 = 8"):
        dm(ids=longer["input_ids"], attention_mask=longer["attention_mask"])


class NestedInOut(nn.Module):
    """A tuple argument and a dict output."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, pair: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = torch.relu(self.a(x + pair[0] * pair[1]))
        return {"logits": self.b(h), "hidden": h}


def test_export_unpacks_nested_inputs_and_returns_the_model_structure() -> None:
    model = NestedInOut()
    x, y = torch.randn(6, 4), _labels(6)
    pair = (torch.randn(6, 4), torch.randn(6, 4))
    dm = decouple.convert(
        model, "scl", ["a"], (x[:2], (pair[0][:2], pair[1][:2])), tracer="export", head_dims=SMALL_HEAD
    )
    tr = dm.program.partitions[True].trace
    assert [n.target for n in tr.graph.nodes if n.op == "placeholder"] == ["x", "pair"]
    dm.train_step(x, pair, target=y)  # the default task loss reads the "logits" entry
    model = dm.program.root  # the trained copy
    model.eval()
    dm.eval()
    with torch.no_grad():
        out, expected = dm.inference_module()(x, pair), model(x, pair)
    assert set(out) == {"logits", "hidden"}
    for key in out:
        torch.testing.assert_close(out[key], expected[key])


# ---------------------------------------------------------------------------------------------
# train and eval behaviour after export


class DropoutBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.drop = nn.Dropout(0.5)
        self.b = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.drop(self.a(x)))


def test_dropout_and_batch_norm_follow_the_mode_after_export() -> None:
    model = DropoutBatchNorm()
    dm = decouple.convert(model, "scl", ["a"], (torch.randn(4, 6),), tracer="export")
    assert dm.program.partitions[True] is not dm.program.partitions[False]  # mode baked in: one graph per mode
    x = torch.randn(16, 6)
    dm.train()
    with torch.no_grad():
        assert not torch.equal(dm(x), dm(x)), "dropout is active in training"
    running_mean = dm.stages[0].module.get_buffer("a.1.running_mean")
    before = running_mean.clone()
    with torch.no_grad():
        _, rep = dm.stages[0](dm.bind((x,), {}))
        batch_stats = F.relu(F.batch_norm(model.a[0](x), None, None, model.a[1].weight, model.a[1].bias, training=True))
        torch.testing.assert_close(rep, batch_stats)  # batch statistics in training
    assert not torch.equal(running_mean, before), "running stats update in training"
    dm.eval()
    model.load_state_dict(dm.effective_state_dict())
    model.eval()
    infer = dm.inference_module()
    with torch.no_grad():
        torch.testing.assert_close(infer(x), infer(x))
        torch.testing.assert_close(infer(x), model(x))  # running statistics, no dropout
        torch.testing.assert_close(dm(x), model(x))


def test_export_matches_fx_on_a_cnn() -> None:
    model = ResCNN(channels=4, blocks=2, num_classes=3)
    x = torch.randn(2, 3, 8, 8)
    dms = {t: decouple.convert(model, "scl", ["blocks.0", "blocks.1"], (x,), tracer=t) for t in ("fx", "export")}
    model.eval()
    for dm in dms.values():
        dm.eval()
        with torch.no_grad():
            torch.testing.assert_close(dm.inference_module()(x), model(x))
    ios = [[s.current_io.shapes.get(s.current_io.representation) for s in dm.stages[:-1]] for dm in dms.values()]
    assert ios[0] == ios[1]


class ViewThenInplace(nn.Module):
    """The value leaving ``a`` is written in place through a view, after the cut."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h.view(-1).mul_(2.0)
        return self.b(h)


def test_export_and_fx_agree_on_parameters_before_each_split_point() -> None:
    from decouple.compiler.candidates import candidate_splits

    model = ResCNN(channels=4, blocks=2, num_classes=3)
    x = torch.randn(2, 3, 8, 8)
    shares = {}
    for tracer in ("fx", "export"):
        dm = decouple.convert(model, "scl", ["blocks.0"], (x,), tracer=tracer)
        points = candidate_splits(dm.program.partitions[True].trace, dm.program.root)
        shares[tracer] = {c.name: round(c.params_share, 6) for c in points}
    common = shares["fx"].keys() & shares["export"].keys()
    assert common and {k: shares["export"][k] for k in common} == {k: shares["fx"][k] for k in common}
    assert min(shares["export"].values()) < 0.5  # export reads every parameter at the top of its graph


@pytest.mark.parametrize("model", [InplaceAfterCut, ViewThenInplace])
def test_export_inplace_ops_after_a_cut_clone_the_input(model: type[nn.Module]) -> None:
    original = model()
    x, y = torch.randn(8, 6), _labels(8)
    dm = decouple.convert(original, "scl", ["a"], (x[:2],), tracer="export", head="linear", head_dims=(4,))
    assert set(dm.program.stages[1].policies[True].values()) == {"clone"}  # aten in-place ops read from their schemas
    sum(dm.local_losses(x, target=y)).backward()  # "modified by an inplace operation" without the clone
    original.eval()
    with torch.no_grad():
        torch.testing.assert_close(dm.eval()(x), original(x))


# ---------------------------------------------------------------------------------------------
# values crossing cuts


def test_masks_cross_every_cut_once_without_gradient() -> None:
    dm = _converted("bert")
    part = dm.program.partitions[True]
    graph_nodes = {n.name: n for n in part.trace.graph.nodes}
    # the raw attention mask reaches every stage for the masked-mean heads
    assert all("attention_mask" in b for b in part.boundaries)
    # the (N, 1, T, T) mask BERT builds from it is computed once and carried to every later stage
    masks = [v for v in part.boundaries[-1]
             if graph_nodes[v].op != "placeholder" and getattr(graph_nodes[v].meta.get("val"), "ndim", 0) == 4]  # fmt: skip
    assert masks, "the extended attention mask crosses the last cut"
    for name in masks:
        home = part.stage_of[name]
        assert sum(name in plan.nodes for plan in part.stages) == 1  # never recomputed
        assert all(name in part.boundaries[j] for j in range(home, len(part.boundaries)))
        for spec in dm.program.stages[home + 1 :]:
            if name in spec.plans[True].inputs:
                assert spec.policies[True][name] == "detach"
    # every tensor a later stage reads is detached on entry: no gradient crosses a cut
    for stage in dm.stages[1:]:
        code = stage.module.code
        for name in stage.io[True].inputs:
            if isinstance(graph_nodes[name].meta.get("val"), torch.Tensor):
                assert f"{name}.detach()" in code


@pytest.mark.parametrize("name", sorted(HF_CASES))
def test_no_device_constants_remain_in_export_graphs(name: str) -> None:
    dm = _converted(name)
    for part in {id(p): p for p in dm.program.partitions.values()}.values():
        for node in part.trace.graph.nodes:
            leaves: list[object] = []
            fx.node.map_aggregate((node.args, node.kwargs), leaves.append)
            found = [a for a in leaves if isinstance(a, torch.device)]
            assert not found, f"{node.name} pins device {found}"


def test_masked_mean_ignores_padding_tokens() -> None:
    case = TEXT_CASES["transformer"]
    x = case.inputs(6)
    repadded = {"ids": x["ids"] + 7 * (1 - x["attention_mask"]), "attention_mask": x["attention_mask"]}
    assert not torch.equal(repadded["ids"], x["ids"])
    losses = {}
    for mask in ("auto", None):
        torch.manual_seed(0)
        dm = _convert(case, mask=mask)
        dm.eval()
        losses[mask] = [[v.item() for v in dm.local_losses(**b, target=_labels(6, 2))] for b in (x, repadded)]
    assert losses["auto"][0][:3] == pytest.approx(losses["auto"][1][:3], abs=1e-6)
    assert losses[None][0][0] != pytest.approx(losses[None][1][0], abs=1e-6)


def test_mask_option_errors_name_the_fix() -> None:
    case = TEXT_CASES["transformer"]
    with pytest.raises(decouple.ConfigError, match="mask='attention_mak'.*did you mean 'attention_mask'"):
        _convert(case, mask="attention_mak")
    with pytest.raises(decouple.ConfigError, match="cannot mask stage 0.*not an \\(N, T\\) mask"):
        _convert(case, mask="embedding_tokens")  # the (N, T, D) token embeddings


# ---------------------------------------------------------------------------------------------
# sequence heads


def test_final_state_reads_the_lstm_state_and_the_sequence_alike() -> None:
    lstm = nn.LSTM(5, 4, num_layers=2, batch_first=True, bidirectional=True)
    x = torch.randn(3, 7, 5)
    out, (h, c) = lstm(x)
    pool = FinalState(directions=2)
    from_state = pool((out, (h, c)))
    assert from_state.shape == (3, 8)
    torch.testing.assert_close(from_state, torch.cat([h[-2], h[-1]], dim=1))
    torch.testing.assert_close(pool(out), from_state)  # full-length sequences: the same states


def test_final_state_with_padding_is_the_state_at_the_last_real_token() -> None:
    lstm = nn.LSTM(5, 4, batch_first=True)
    lengths = [7, 4, 2]
    x = torch.randn(3, 7, 5)
    mask = (torch.arange(7)[None] < torch.tensor(lengths)[:, None]).long()
    out, _ = lstm(x)
    pooled = FinalState(directions=1)(out, mask)
    for i, n in enumerate(lengths):
        _, (h, _) = lstm(x[i : i + 1, :n])
        torch.testing.assert_close(pooled[i], h[-1, 0])


def test_token_pools_respect_left_and_right_padding() -> None:
    x = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = right.flip(1)
    assert last_valid_index(right).tolist() == [2, 1]
    assert last_valid_index(left).tolist() == [3, 3]
    assert TokenSelect(-1)(x, right).flatten().tolist() == [2.0, 5.0]
    assert TokenSelect(0)(x, right).flatten().tolist() == [0.0, 4.0]
    assert TokenMean()(x, right).flatten().tolist() == [1.0, 4.5]


@pytest.mark.parametrize("pool", ["first", "last", "final_state"])
def test_sequence_pool_options(pool: str) -> None:
    case = TEXT_CASES["lstm"]
    dm = _convert(case, pool=pool)
    pools = [s.objective.pool for s in dm.stages[:-1]]
    expected = {"first": TokenSelect, "last": TokenSelect, "final_state": FinalState}[pool]
    # the embedding stage is not recurrent: "final_state" reads the masked mean there
    assert isinstance(pools[0], TokenMean if pool == "final_state" else expected)
    assert all(isinstance(p, expected) for p in pools[1:])
    extras = [s.objective_extras for s in dm.stages[:-1]]
    assert extras == ([{}] * 3 if pool == "first" else [{"mask": "attention_mask"}] * 3)
    x = case.inputs(6)
    dm.train_step(**x, target=_labels(6, 2))
    assert_gradient_isolation(dm, **x, target=_labels(6, 2))


def test_final_state_on_a_time_major_lstm() -> None:
    class TimeMajor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(20, 6)
            self.lstm = nn.LSTM(6, 4, bidirectional=True)  # (T, N, D)
            self.head = nn.Linear(8, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            _, (h, _) = self.lstm(self.embedding(ids).transpose(0, 1))
            return self.head(torch.cat([h[-2], h[-1]], dim=1))

    ids = torch.randint(0, 20, (6, 5))
    dm = decouple.convert(TimeMajor(), "scl", ["lstm"], (ids,), pool="final_state")
    pool = dm.stages[0].objective.pool
    rep = dm.stages[0](dm.bind((ids,), {}))[1]
    assert pool(rep).shape == (6, 8)
    dm.train_step(ids, target=_labels(6, 2))


# ---------------------------------------------------------------------------------------------
# tied weights and inputs


def _lm_loss(output: Any, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits_of(output).flatten(0, 1), target.flatten())


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_tied_embedding_and_lm_head_name_both_parameters(tracer: str) -> None:
    ids = token_batch(2)["input_ids"]
    with pytest.raises(
        decouple.TiedParameterError, match=r"'(wte|lm_head)\.weight' \(also registered as '(lm_head|wte)\.weight'\)"
    ):
        decouple.convert(TinyGPT(64), "scl", ["blocks.0"], (ids,), tracer=tracer, loss_fn=_lm_loss, num_classes=64)


def test_tied_gpt2_lm_head_raises_with_both_names() -> None:
    ids = token_batch(2)["input_ids"]
    with pytest.raises(decouple.TiedParameterError, match="transformer.wte.weight") as info:
        decouple.convert(
            hf_gpt2_lm(), "scl", ["transformer.h.0"], {"input_ids": ids}, loss_fn=_lm_loss, tracer="export"
        )
    assert "lm_head.weight" in str(info.value)


@pytest.mark.slow
def test_untied_gpt2_lm_trains_as_the_error_suggests() -> None:
    model = hf_gpt2_lm()
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())  # untie, as the error says
    ids = token_batch(2)["input_ids"]
    dm = decouple.convert(model, "bp", ["transformer.h.0"], {"input_ids": ids}, loss_fn=_lm_loss, tracer="export")
    x = token_batch(4)["input_ids"]
    losses = [dm.train_step(input_ids=x, target=x)["stage1"] for _ in range(3)]
    assert losses[-1] < losses[0]


def test_keyword_inputs_and_catch_all_kwargs() -> None:
    case = TEXT_CASES["transformer"]
    dm = _convert(case)
    x = case.inputs(4)
    torch.testing.assert_close(dm.eval()(x["ids"], x["attention_mask"]), dm(**x))

    class WithKwargs(TransformerClassifier):
        def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            return super().forward(ids, attention_mask)

    dm = decouple.convert(WithKwargs(40), "scl", ["layers.0"], case.inputs(2))
    with pytest.raises(decouple.InputError, match=r"unknown input\(s\) \['labels'\]"):
        dm(**x, labels=torch.zeros(4))
    with pytest.raises(decouple.InputError, match="batch size 1"):
        decouple.convert(BiLSTMClassifier(40), "scl", ["lstm1"], case.inputs(1), tracer="export")


# ---------------------------------------------------------------------------------------------
# other methods and runtimes (owned by other issues: run once they exist)


_QUICK = ("bert", "lstm", "transformer")  # the others run with -m slow


@pytest.mark.parametrize("method", ["al", "early_exit"])
@pytest.mark.parametrize(
    "name", [n if n in _QUICK else pytest.param(n, marks=pytest.mark.slow) for n in sorted({**HF_CASES, **TEXT_CASES})]
)
def test_other_methods_convert_sequence_models(method: str, name: str) -> None:
    case = {**HF_CASES, **TEXT_CASES}[name]
    classes = 3 if name in HF_CASES else 2
    dm = _convert(case, method=method, num_classes=classes)
    x = case.inputs(6)
    dm.train()
    dm.train_step(**x, target=_labels(6, classes))
    assert_gradient_isolation(dm, **x, target=_labels(6, classes))
    if name != "vit":
        assert any(s.objective_extras.get("mask") == "attention_mask" for s in dm.stages)
    dm.eval()
    infer = dm.inference_module()
    with torch.no_grad():
        assert logits_of(infer(**x)).shape == (6, classes)
    if dm.program.dropped:  # al replaces the model's head: its weights are the inference module's
        infer.load_state_dict(dm.effective_state_dict(), strict=True)
        return
    fresh = case.build()
    fresh.load_state_dict(dm.effective_state_dict(), strict=True)
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits_of(infer(**x)), logits_of(fresh(**x)))


def test_pipelined_run_on_bert() -> None:
    case = HF_CASES["bert"]
    dms = []
    for _ in range(2):
        torch.manual_seed(0)  # same weights, no dropout: pipelined and sequential runs compare exactly
        dms.append(decouple.convert(hf_bert(dropout=0.0), "scl", case.splits, case.inputs(2), tracer="export"))
    batches = [(case.inputs(n), _labels(n)) for n in (6, 5, 6)]
    with dms[0].pipeline() as pipe:
        for x, y in batches:
            pipe.submit(**x, target=y)
        pipe.drain()
    for x, y in batches:
        dms[1].train_step(**x, target=y)
    for a, b in zip(dms[0].parameters(), dms[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
def test_export_stages_on_two_devices() -> None:
    case = HF_CASES["gpt2"]
    dm = _convert(case, devices=["cpu", "cuda:0"])
    x = case.inputs(6)
    dm.train_step(**x, target=_labels(6))
    model = dm.program.root
    model.eval()
    dm.eval()
    with torch.no_grad():
        out = dm.inference_module(device="cuda:0")(**{k: v.cuda() for k, v in x.items()})
        assert out.logits.device.type == "cuda"
        torch.testing.assert_close(logits_of(dm(**x)).cpu(), out.logits.cpu(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# candidate split points of sequence models


def test_masks_do_not_hide_layer_boundaries_from_candidates() -> None:
    from decouple.compiler.candidates import candidate_splits

    gpt2 = _converted("gpt2")
    names = {c.name for c in candidate_splits(gpt2.program.partitions[True].trace, gpt2.program.root)}
    assert {"transformer.h.0", "transformer.h.1", "transformer.h.2"} <= names  # the causal mask crosses them all
    dm = decouple.convert(
        TransformerClassifier(40), "scl", 4, TEXT_CASES["transformer"].inputs(2), head_dims=SMALL_HEAD
    )
    part = dm.program.partitions[True]
    assert dm.num_stages == 4
    assert all(s.spec.startswith(("embedding", "layers.")) for s in part.splits)
    assert all("attention_mask" in b for b in part.boundaries)  # the mask still reaches every stage

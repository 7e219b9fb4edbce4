"""Random split specifications, valid and invalid, against random architectures.

Specs drawn from the candidate split points (``decouple splits`` lists them) must convert with every
registered method and satisfy isolation and transparency. Other specs (module and node names in forward order,
garbage, duplicates, wrong order, non-strings) either convert and satisfy the same properties, or
raise a documented :class:`decouple.DecoupleError`, never another exception type.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import decouple
from decouple.compiler.candidates import candidate_splits
from decouple.inspection import trace_model

from .helpers import assert_gradient_isolation, registered_methods, small_options
from .models import MLP, FunctionalDropout, ResCNN, Reused, ShapeCarrier, UsesTuple

ARCHITECTURES = {
    "mlp": (lambda: MLP([5, 7, 6, 8, 4], 3), lambda: (torch.randn(6, 5),), 3),
    "rescnn": (lambda: ResCNN(channels=4, blocks=2, num_classes=3), lambda: (torch.randn(6, 3, 8, 8),), 3),
    "rescnn_noskip": (
        lambda: ResCNN(channels=4, blocks=2, num_classes=3, long_skip=False),
        lambda: (torch.randn(6, 3, 8, 8),),
        3,
    ),
    "tuple": (UsesTuple, lambda: (torch.randn(6, 6),), 3),
    "shapes": (ShapeCarrier, lambda: (torch.randn(6, 3, 8, 8),), 3),
    "dropout": (FunctionalDropout, lambda: (torch.randn(6, 10),), 3),
    "reused": (Reused, lambda: (torch.randn(6, 4),), 3),
}


def _names(model: torch.nn.Module) -> list[str]:
    """Module qualified names and fx node names of the model, in the order their cut falls."""
    graph = fx.symbolic_trace(model).graph
    position = {n.name: i for i, n in enumerate(graph.nodes)}
    last: dict[str, int] = {}
    for n in graph.nodes:
        for value in (n.meta.get("nn_module_stack") or {}).values():
            last[value[0]] = position[n.name]
    compute = [n.name for n in graph.nodes if n.op in ("call_module", "call_function", "call_method")]
    keyed = [(last[m], 0, m) for m in last if m] + [(position[c], 1, c) for c in compute]
    return [name for _, _, name in sorted(keyed)]


def _candidates(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[str]:
    """The candidate split points, in forward order."""
    return [c.name for c in candidate_splits(trace_model(model, inputs), model)]


@st.composite
def spec(draw):
    arch = draw(st.sampled_from(sorted(ARCHITECTURES)))
    build, inputs, classes = ARCHITECTURES[arch]
    model = build()
    example = inputs()
    kind = draw(st.sampled_from(["candidates", "plausible", "anything"]))
    if kind == "candidates":  # valid: distinct candidate points in forward order
        candidates = _candidates(model, example)
        assume(candidates)  # UsesTuple passes two tensors everywhere: no single-tensor point
        chosen = draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=3, unique=True))
        splits = sorted(chosen, key=candidates.index)
    elif kind == "plausible":  # distinct module and node names in forward order (some cut inside a block)
        ordered = _names(model)
        chosen = draw(st.lists(st.sampled_from(ordered), min_size=1, max_size=3, unique=True))
        splits = sorted(chosen, key=ordered.index)
    else:  # anything: garbage, duplicates, wrong order, non-strings
        pool = [*_names(model), "nonexistent", "layer9", "", "blocks.7"]
        items = st.one_of(st.sampled_from(pool), st.integers(-2, 3), st.none())
        splits = draw(st.lists(items, min_size=0, max_size=4))
    method = draw(st.sampled_from(registered_methods()))
    return kind, model, splits, example, classes, method


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec())
def test_random_split_specs(case) -> None:
    kind, model, splits, inputs, classes, method = case
    facts = decouple.METHODS[method]
    try:
        dm = decouple.convert(
            model, method=method, splits=splits, example_inputs=inputs, num_classes=classes, **small_options(method)
        )
    except decouple.DecoupleError as exc:
        assert kind != "candidates", f"candidate split points {splits} must convert with {method!r}: {exc}"
        event(f"rejected: {type(exc).__name__}")
        return  # a documented, explained rejection
    event(f"converted ({kind}): {method}")
    target = torch.arange(inputs[0].shape[0]) % classes
    model.eval()
    dm.eval()
    with torch.no_grad():
        if facts.replaces_head:
            assert dm.inference_module()(*inputs).shape == (inputs[0].shape[0], classes)
        else:
            torch.testing.assert_close(dm.inference_module()(*inputs), model(*inputs))
    dm.train()
    if not facts.end_to_end:
        assert_gradient_isolation(dm, *inputs, target=target)
    dm.train_step(*inputs, target=target)

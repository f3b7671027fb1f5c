"""The op table (fastsamp/ops/_table.py) is the one signature of every op: the public functions, the
reference, every backend, the generated C glue and the registered torch.ops.fastsamp ops agree with it."""
import inspect

import pytest
import torch
from conftest import backend_device
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_map_only

from fastsamp import backends, ops
from fastsamp.ops import _autograd, _library, _table, reference
from fastsamp.ops import random as rng

SIZES = {"B": 3, "D": 2, "K": 2, "M": 1, "T": 2, "H": 4, "W": 2, "O": 4,  # O: mlp_net's outputs (policy_params' 2D)
         "N": 4}  # N: the policy's kept activations per step, 2(L+1) (policy_params: L = 1)
INTS = {"n": 3, "n_steps": 2, "n_trapezoid": 2, "n_leapfrog": 2, "mh": 0, "B": 3, "D": 2, "batch_size": 3,
        "n_threads": 1, "target_kind": 2, "act": 1}  # the policy kernels' Langevin target: Neal's funnel; SiLU
POSITIVE = ("variances", "step_size", "u", "ts")
GLUE_OPS = list(_table.OPS.values())


def takes(fn, names) -> bool:
    """fn's parameters are `names` in order, then only keyword-only extras (e.g. the reference's `draw`)."""
    params = list(inspect.signature(fn).parameters.values())
    return [p.name for p in params[:len(names)]] == names and all(p.kind is p.KEYWORD_ONLY
                                                                 for p in params[len(names):])


def call(fn, op, args):
    """fn(*args) with the arguments fn takes keyword-only (random.normal's chain_offset) by name."""
    params = inspect.signature(fn).parameters.values()
    k = sum(p.kind is not p.KEYWORD_ONLY for p in params)
    return fn(*args[:k], **{a.name: v for a, v in zip(op.args[k:], args[k:])})


def reference_of(op):
    return getattr(reference, op.name, None) or getattr(rng, op.name)


def dims(op, **given):
    env = dict(SIZES)
    env["n"] = INTS["n"]
    env.update(given)
    return lambda shape: tuple(eval(d, {}, env) for d in shape)  # the table's dim expressions


def policy_params(dtype, device, O=SIZES["O"]):
    """DriftNet layers [W_s (H, D), b_s, W_o (O, H), b_o, W_1 (H, H), b_1] (O = 2D), small."""
    H, D = SIZES["H"], SIZES["D"]
    return [0.3 * torch.randn(shape, dtype=dtype, device=device) for shape in ((H, D), (H,), (O, H), (O,), (H, H),
                                                                              (H,))]


def make_args(op, dtype, device, *, optional: bool):
    """Arguments of the backend signature, sized by SIZES; optional tensors given or None (score_mh_accept's
    score_prop then takes its rows form: R = B rows beside the M interior sets, else (M + 1)·B)."""
    O = SIZES["D"] if op.name == "mlp_net_energy_lsq" else SIZES["O"]  # its rule: O <= D
    shape_of = dims(op, R=SIZES["B"] * (1 if optional else SIZES["M"] + 1), O=O)
    out = []
    for a in op.args:
        if a.kind == "tensors":
            out.append(policy_params(dtype, device, O))
        elif a.kind in ("state", "tensor"):
            if a.optional and not optional:
                out.append(None)
                continue
            t_dtype = torch.float64 if a.dtype == "f64" else dtype
            t = torch.randn(shape_of(a.shape), dtype=t_dtype, device=device)
            out.append(t.abs() + 0.5 if a.name in POSITIVE else t)
        else:
            u64 = 7 if a.name == "chain_offset" else 2**63 + 5  # seeds and offsets past int64
            out.append({"float": 0.5, "int": INTS.get(a.name), "threads": INTS.get(a.name), "bool": True, "u64": u64,
                        "dtype": dtype, "device": device, "out": None}[a.kind])
    return out


def check_outputs(op, result, dtype, args):
    result = result if isinstance(result, tuple) else (result,)
    assert len(result) == len(op.outs), op.name
    shape_of = dims(op)
    for o, r in zip(op.outs, result):
        given = o.present_if and args[[a.name for a in op.args].index(o.present_if)]
        present = o.present_if is None or (given is not None and given is not False)
        if not present:
            assert r is None, (op.name, o.name)
            continue
        if o.like_list:
            like = args[[a.name for a in op.args].index(o.like_list)]
            assert [(t.shape, t.dtype) for t in r] == [(t.shape, t.dtype) for t in like], (op.name, o.name)
            continue
        want = {"x": dtype, "bool": torch.bool, "f64": torch.float64}[o.dtype]
        assert tuple(r.shape) == shape_of(o.shape) and r.dtype == want, (op.name, o.name, r.shape, r.dtype)


def test_the_table_parses_and_names_are_unique():
    for op in _table.OPS.values():
        names = [a.name for a in op.args] + [o.name for o in op.outs]
        assert len(set(names)) == len(names), op.name
        assert set(op.grad) <= {a.name for a in op.args if a.kind in ("state", "tensor")}, op.name
        known = {a.name for a in op.args} | {o.name for o in op.outs} | {"dtype"} | set(SIZES) | {"n", "0"}
        assert _table.c_names(op) <= known, op.name


def test_list_layouts_parse():
    """A list's layout: the first shapes, then the group after `*` repeated to the end; with `{ints:names}` one
    block per len(names) ints of that argument, the group `*count` times."""
    a, = _table._args("params:tensors[(H,D)(H,)*(H,H)(H,)]")
    assert (a.layout, a.per) == (((("H", "D"), ("H",)), (("H", "H"), ("H",)), ""), ())
    a, = _table._args("w:tensors[(2*D,H)(O,)]")
    assert a.layout == (((("2*D", "H"), ("O",)), (), ""))
    a = _table._args("params:tensors{dims:F,H,L,act}[(F,)(H,D+2*F)*L(H,H)] dims:ints")[0]
    assert (a.layout, a.per) == (((("F",), ("H", "D+2*F")), (("H", "H"),), "L"), ("dims", ("F", "H", "L", "act")))


@pytest.mark.parametrize("spec", [
    "p:tensors[(H,D)(H,)*]",            # an empty group
    "p:tensors[(H,D)*(H,H)*(H,)]",      # a second `*`
    "p:tensors[*(H,H)(H,)]",            # no first shapes
    "p:tensors[H,D]",                   # no parentheses
    "p:tensors[]",                      # empty
    "p:tensors[(H,D)(H,]",              # unbalanced
    "n:int[(H,)]",                      # a layout on another kind
    "p:tensors[(H,D)*L(H,H)]",          # a count without blocks
    "p:tensors{d:F,H}[(F,)*(H,H)] d:ints",   # blocks without a count
    "p:tensors{d:F,H}[(F,)*L(H,H)] d:ints",  # a count not among the names
    "p:tensors{d:F,L}[(F,)*L(H,H)] d:floats",  # blocks of a non-ints argument
    "p:tensors{d}[(F,)*L(H,H)] d:ints",      # no names
])
def test_malformed_layouts_are_refused(spec):
    with pytest.raises(ValueError, match=r"^bad (layout|argument spec)"):
        _table._args(spec)


def test_reference_and_backends_take_the_table_signature():
    for op in _table.OPS.values():
        want = [a.name for a in op.args]
        assert op.reference == (hasattr(reference, op.name) or hasattr(rng, op.name)), op.name
        if not op.reference:
            continue
        assert takes(reference_of(op), want), op.name
    for name in ("cpp", "cuda", "triton"):
        if name == "cuda":
            if not backends.is_available("cpp"):
                continue
            from fastsamp.backends import cuda as module  # the glue imports without a GPU
        else:
            module = backends._load(name)[0]
            if module is None:
                continue
        for op in _table.OPS.values():
            assert hasattr(module, op.name) == (name in op.backends), (name, op.name)
            if name in op.backends:
                assert takes(getattr(module, op.name), [a.name for a in op.args]), (name, op.name)


def test_public_functions_take_the_table_arguments():
    publics = {op.public for op in _table.OPS.values() if op.public}
    assert publics == set(ops.__all__)
    for op in _table.OPS.values():
        if op.public is None:
            continue
        params = inspect.signature(getattr(ops, op.public)).parameters
        for a in op.args:
            if a.kind in ("state", "tensor", "out"):
                public = op.renames.get(a.name, a.name)
                assert public is None or public in params, (op.public, a.name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("optional", [False, True], ids=["without_optional", "with_optional"])
def test_outputs_match_the_table(dtype, optional):
    """Reference and every available compiled backend give the table's output shapes and dtypes (the mlp ops,
    whose lists of per-network dims follow the networks, are covered by tests/test_mlp.py)."""
    for op in _table.OPS.values():
        if any(a.kind in ("ints", "floats") for a in op.args) or op.name == "mlp_net_energy_lsq":
            continue  # mlp_net_energy_lsq needs O <= D (policy_params has O = 2D): tests/test_registration.py's opcheck
        device = torch.device("cpu")
        args = make_args(op, dtype, device, optional=optional)
        if op.reference:
            check_outputs(op, call(reference_of(op), op, args), dtype, args)
        for name in op.backends:
            if backends.is_available(name) and backend_device(name) == device:
                check_outputs(op, getattr(backends._load(name)[0], op.name)(*args), dtype, args)


@pytest.mark.parametrize("optional", [False, True], ids=["without_optional", "with_optional"])
def test_registered_ops_follow_the_table(optional):
    assert set(_library.ENTRIES) == {op.name for op in _table.registered()}
    assert {n for n, op in _table.OPS.items() if op.grad} == set(_autograd.FORMULAS)
    for op in _table.registered():
        schema = getattr(torch.ops.fastsamp, op.name).default._schema
        assert [a.name for a in schema.arguments] == ([a.name for a in op.schema_args]
                                                      + [f"{a.name}_t" for a in op.u64_args]), op.name
        assert len(schema.returns) == len(op.outs), op.name
        if any(a.kind in ("ints", "floats") for a in op.args):
            continue  # the mlp ops' networks: their fake implementations run in tests/test_registration.py's opcheck
        given = make_args(op, torch.float32, "cpu", optional=optional)
        args = [_library.encode_u64(a) if spec.kind == "u64" else a
                for a, spec in zip(given, op.args) if spec.kind != "out"]
        with FakeTensorMode() as mode:
            fake = tree_map_only(torch.Tensor, mode.from_tensor, args)
            check_outputs(op, getattr(torch.ops.fastsamp, op.name)(*fake), torch.float32, args)


@pytest.mark.parametrize("op", GLUE_OPS, ids=[op.name for op in GLUE_OPS])
def test_generated_glue_is_what_the_backends_run(op):
    """The cpp module's function is the table's generated source (no hand-written copy left)."""
    if not backends.is_available("cpp") or "cpp" not in op.backends:
        pytest.skip("cpp backend unavailable")
    fn = getattr(backends._load("cpp")[0], op.name)
    assert fn.__code__.co_filename == f"<fastsamp glue cpu_{op.name}>"
    assert f"_C.cpu_{op.kernel}(" in _table.glue_source(op, "cpu")
    assert f"_launch(_C.cuda_{op.kernel}, " in _table.glue_source(op, "cuda")

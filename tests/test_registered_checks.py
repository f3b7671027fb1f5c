"""The registered ops check their arguments against the op table (`_codegen.check_source`): called directly, a
tensor of a wrong shape, dtype or device, or a non-contiguous one, gets a clear exception naming the op and the
argument (never a kernel reading past a buffer), from the CPU / CUDA kernel (both ways the Autograd kernel reaches
it) and from the fake implementation (FakeTensorMode: what torch.compile / export trace)."""
import re

import pytest
import torch
from test_registration import op_args
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_map_only

from fastsamp.ops import _codegen, _library, _table, reference
from fastsamp.ops.mlp import ACTIVATIONS

OPS = [op for op in _table.registered() if any(a.kind in ("state", "tensor") for a in op.schema_args)]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def valid_args(op, device):
    return tree_map_only(torch.Tensor, lambda t: t.to(device), list(op_args(op.name, torch.float64)))


def calls(op, device):
    """The ways a call reaches the op's checks: through the Autograd kernel (which calls the backend function
    itself, `_direct_kernels`), below it (the registered CPU / CUDA kernel, `_backend_kernel`), with the first u64
    argument's tensor form (the kernel again: the Autograd kernel's general case) and under FakeTensorMode (the fake
    implementation)."""
    opobj = getattr(torch.ops.fastsamp, op.name).default

    def fake(*args):
        with FakeTensorMode() as mode:
            return opobj(*tree_map_only(torch.Tensor, mode.from_tensor, args))
    ways = {"autograd": opobj, "kernel": _library.ENTRIES[op.name].eager, "fake": fake}
    if op.u64_args:
        ways["tensor form"] = lambda *args: opobj(*args, torch.tensor(1, device=device))
    return ways


def names(text):
    return set(re.findall(r"[A-Za-z_]\w*", text))


def a_dim_of_its_own(op, i, args):
    """Whether tensor argument i alone gives its leading dim (the dims read it there and no other given tensor has
    it): one row more is then a valid call (mlp_net's x, score_mh_accept's interior sets), or refused by the op's
    rule (score_mh_accept's score_prop rows)."""
    a = op.schema_args[i]
    lead = names(a.shape[0])
    own = any(f"{a.name}.shape" in d and lead & names(d.split("=")[0]) for d in _codegen._dims_source(op))
    return own and not any(b is not a and v is not None and b.kind in ("state", "tensor")
                           and lead & names(" ".join(b.shape)) for b, v in zip(op.schema_args, args))


def tensor_positions(op, args):
    return [i for i, (a, v) in enumerate(zip(op.schema_args, args)) if a.kind in ("state", "tensor") and v is not None]


def assert_raises_naming(fn, args, error, op, name, match=""):
    with pytest.raises(error, match=rf"^{op.name}: (?=.*(?<!\w){re.escape(name)}(?!\w)).*{match}"):
        fn(*args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_one_row_more_is_refused_naming_the_argument(op, device):
    args = valid_args(op, device)
    for how, fn in calls(op, device).items():
        runs = how == "fake" or device == "cpu" or op.reference  # no CUDA kernel: the internal policy kernels
        if runs:
            fn(*args)
        for i in tensor_positions(op, args):
            bad, name = list(args), op.schema_args[i].name
            t = args[i]
            bad[i] = torch.cat([t, t[:1]])
            if not a_dim_of_its_own(op, i, args):
                assert_raises_naming(fn, bad, ValueError, op, name)
            elif (op.name, name) in OWN_DIM_REFUSED:
                assert_raises_naming(fn, bad, ValueError, op, name, OWN_DIM_REFUSED[op.name, name])
            elif runs:  # a dim of its own: one row more is another valid call
                fn(*bad)


OWN_DIM_REFUSED = {("score_mh_accept", "score_prop"): "must have B rows beside interior"}
"""The tensors giving a dim of their own (`a_dim_of_its_own`) whose one row more is refused (the op's rule); the
others' (gmm_score's x, score_mh_accept's interior, mlp_net's x, ...) is accepted."""


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_wrong_dtype_and_non_contiguous_are_refused_naming_the_argument(op, device):
    """float32 in a float64 call (the anchor, `_codegen._like_arg`: the other tensors are refused, named beside it),
    and a strided copy of each tensor (the kernels would read its memory as dense rows)."""
    args, like = valid_args(op, device), _codegen._like_arg(op)
    for fn in calls(op, device).values():
        for i in tensor_positions(op, args):
            a, t = op.schema_args[i], args[i]
            bad = list(args)
            bad[i] = t.float()
            if a is like:
                assert_raises_naming(fn, bad, TypeError, op, a.name, rf"must have dtype torch\.float32 like {a.name}")
            else:
                assert_raises_naming(fn, bad, TypeError, op, a.name, r"must have dtype torch\.float64")
            if t.numel() > 1:
                bad[i] = torch.empty(*t.shape, 2, dtype=t.dtype, device=t.device)[..., 0].copy_(t)
                assert_raises_naming(fn, bad, ValueError, op, a.name, "must be contiguous")
        for i, a in enumerate(op.schema_args):
            if a.kind == "tensors":  # a list's tensors: dtype and contiguity (their shapes are not in the table)
                bad, last = list(args), len(args[i]) - 1
                bad[i] = [args[i][0].float()] + list(args[i][1:])
                assert_raises_naming(fn, bad, TypeError, op, f"{a.name}[0]", r"must have dtype torch\.float64")
                bad[i] = list(args[i][:last]) + [torch.stack([args[i][last]] * 2, -1)[..., 0]]
                assert_raises_naming(fn, bad, ValueError, op, f"{a.name}[{last}]", "must be contiguous")


@pytest.mark.parametrize("device", DEVICES)
def test_messages_name_the_op_and_the_dims(device):
    """The message of the task's example, and the others (the state's dtype, a wrong ndim, the rows rule, a u64
    tensor form), on every path."""
    op = _table.OPS["score_mh_accept"]
    args = valid_args(op, device)
    x = args[0]
    cases = [(1, x[:4], ValueError, r"x_prop must have shape \(5, 3\) \(B, D\), got \(4, 3\) \(dims: B, D = x.shape\)"),
             (0, x.long(), TypeError, "x must be float32 or float64, got torch.int64"),
             (0, x.reshape(-1), ValueError, r"x must have 2 dims \(B, D\), got shape \(15,\)"),
             (6, args[6][0], ValueError, r"interior must have shape \(5, 5, 3\) \(M, B, D\), got \(5, 3\)"),
             (3, torch.cat([args[3], args[3][:1]]), ValueError, r"score_prop must have B rows beside interior")]
    for fn in calls(op, device).values():
        for i, value, error, match in cases:
            bad = list(args)
            bad[i] = value
            with pytest.raises(error, match=f"^score_mh_accept: {match}"):
                fn(*bad)
        with pytest.raises(ValueError, match="^score_mh_accept: seed_t must be one int64 element"):
            fn(*args, torch.tensor([1.0], device=device))  # a seed's tensor form


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_a_cpu_tensor_beside_cuda_tensors_is_refused():
    op = _table.OPS["score_mh_accept"]
    args = valid_args(op, "cuda")
    for fn in calls(op, "cuda").values():
        bad = list(args)
        bad[2] = args[2].cpu()
        assert_raises_naming(fn, bad, ValueError, op, "score", "must be on cuda")


def test_the_fake_refuses_a_cpu_tensor_beside_cuda_tensors():
    """The fake implementation's device test, without a GPU: FakeTensorMode makes CUDA tensors on any machine."""
    op = _table.OPS["score_mh_accept"]
    args = valid_args(op, "cpu")
    with FakeTensorMode() as mode:
        bad = tree_map_only(torch.Tensor, lambda t: torch.empty(t.shape, dtype=t.dtype, device="cuda"), args)
        getattr(torch.ops.fastsamp, op.name).default(*bad)
        bad[2] = mode.from_tensor(args[2])
        assert_raises_naming(getattr(torch.ops.fastsamp, op.name).default, bad, ValueError, op, "score",
                             "must be on cuda:0 like x, got cpu")


@pytest.mark.parametrize("name", ["normal", "uniform"])
def test_factory_ops_refuse_a_bad_tensor_form(name):
    """normal / uniform (no tensor argument but the u64 tensor forms): a float or two-element seed tensor is refused
    (the CPU glue read int() of it: 1.7 drew seed 1's stream)."""
    op = _table.OPS[name]
    args = list(op_args(name, torch.float32))
    for fn in calls(op, "cpu").values():
        fn(*args, torch.tensor(3))
        for bad in (torch.tensor([1.7]), torch.tensor([1, 2])):
            with pytest.raises(ValueError, match=f"^{name}: seed_t must be one int64 element on cpu"):
                fn(*args, bad)


LAYOUT_OPS = [op for op in OPS if any(a.layout and not a.per for a in op.schema_args)]


@pytest.mark.parametrize("op", LAYOUT_OPS, ids=[op.name for op in LAYOUT_OPS])
def test_a_list_of_layers_follows_its_layout(op):
    """The layers of the policy and plain-MLP ops (`params`: W_in, b_in, W_out, b_out, then W_k, b_k per hidden
    layer): a bias or a hidden weight one wider, or a layer missing, is refused naming it (the kernels read them
    with the dims of the others)."""
    args = valid_args(op, "cpu")
    i = next(i for i, a in enumerate(op.schema_args) if a.layout)
    name, layers = op.schema_args[i].name, args[i]
    for fn in calls(op, "cpu").values():
        for k in (1, 4):
            bad = list(args)
            t = layers[k]
            bad[i] = layers[:k] + [torch.cat([t, t[..., :1]], -1)] + layers[k + 1:]
            assert_raises_naming(fn, bad, ValueError, op, f"{name}[{k}]", r"must have shape .* \(the list's shapes")
        for cut in (layers[:-1], layers[:2], []):  # also where the dims read a layer missing (mlp_net's O)
            bad = list(args)
            bad[i] = cut
            assert_raises_naming(fn, bad, ValueError, op, name, rf"must hold the tensors .*, got {len(cut)}$")


NET_OPS = [_table.OPS[name] for name in ("mlp_score", "mlp_mala", "mlp_hmc", "mlp_energy", "mlp_energy_mala",
                                         "mlp_energy_hmc")]


@pytest.mark.parametrize("op", NET_OPS, ids=[op.name for op in NET_OPS])
def test_a_network_list_follows_its_dims(op):
    """The score networks' flat lists (mlp_score family; `params`, per network of `dims` [F, H, L, act]: ω (F,),
    m (D,), W_0 (H, D + 2F), b_0, W_out (D, H), b_out, then W_k (H, H), b_k L times), here two networks: each
    tensor cut to one row is refused naming it (the kernels read it with the shape its dims give), as are a list one
    tensor short or long, dims not 4 ints per network, and scalars not 4 per network."""
    args = valid_args(op, "cpu")
    at = {a.name: i for i, a in enumerate(op.schema_args)}
    for name in ("params", "dims", "scalars", "energy"):  # a second network, the same as the first
        if name in at:
            args[at[name]] = list(args[at[name]]) * 2
    params = args[at["params"]]
    for fn in calls(op, "cpu").values():
        fn(*args)
        for k, t in enumerate(params):
            bad = list(args)
            bad[at["params"]] = params[:k] + [t[:1]] + params[k + 1:]
            assert_raises_naming(fn, bad, ValueError, op, f"params[{k}]", r"must have shape .* \(the list's shapes")
        for name, cut, match in [("params", params[:-1], f"must hold the tensors .*: {len(params)}, got "),
                                 ("params", params + params[:2], f"must hold the tensors .*: {len(params)}, got "),
                                 ("dims", args[at["dims"]][:-1], "must hold 4 ints"),
                                 ("scalars", args[at["scalars"]][:-1], "must hold 4 values per network"),
                                 ("dims[7]", args[at["dims"]][:7] + [2], r"must be an activation code \(0, 1\)")]:
            bad = list(args)
            bad[at[name.split("[")[0]]] = cut
            assert_raises_naming(fn, bad, ValueError, op, name, match)


NET_ACT_OPS = [op for op in OPS if any(a.name == "act" and a.kind == "int" for a in op.schema_args)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", NET_ACT_OPS, ids=[op.name for op in NET_ACT_OPS])
def test_an_unknown_activation_code_is_refused(op, device):
    """mlp_net's family takes the activation as a code of ops.mlp.ACTIVATIONS: another int is refused naming `act`
    on every path (the reference indexed a tuple with it: -1 ran SiLU, 7 an IndexError)."""
    assert _table.ACTIVATION_CODES == tuple(sorted(ACTIVATIONS.values()))
    args = valid_args(op, device)
    at = [a.name for a in op.schema_args].index("act")
    for act in (-1, 2, 7):
        bad = list(args)
        bad[at] = act
        for fn in calls(op, device).values():
            assert_raises_naming(fn, bad, ValueError, op, "act", rf"must be an activation code .*got {act}$")
        with pytest.raises(ValueError, match=rf"^act must be an activation code .*got {act}$"):  # called directly
            getattr(reference, op.name)(*bad)


def test_every_activation_code_is_checked():
    """The generated check finds activation codes by the name `act` (an int argument, or an int of a list's blocks):
    every op passing one to C is an op the two tests above run, so a code named otherwise cannot go unchecked."""
    assert {op.name for op in OPS if "act" in _codegen.c_names(op)} == {op.name for op in NET_ACT_OPS}
    blocks = {op.name for op in OPS for a in op.schema_args if a.per and "act" in a.per[1]}
    assert blocks == {op.name for op in NET_OPS}
    assert {op.name for op in OPS if {"dims", "params"} & _codegen.c_names(op)} == blocks | {
        op.name for op in NET_ACT_OPS} | {op.name for op in OPS if op.name.startswith("policy_")}


@pytest.mark.parametrize("name", ["sde_step", "mala_propose"])
def test_nested_transforms_check_the_arguments(name):
    """jacrev(jacrev(f)) runs the op's reference (`_library._reference_test`), whose torch ops would broadcast a
    one-row score to all B = 5 chains: refused naming it, as under one transform; the valid call's Hessian."""
    op, jacrev = _table.OPS[name], torch.func.jacrev
    args = valid_args(op, "cpu")

    def f(score):
        return lambda x: getattr(torch.ops.fastsamp, name).default(x, score, *args[2:])[0].square().sum()
    x, score = args[0], args[1]
    assert jacrev(jacrev(f(score)))(x).shape == (*x.shape, *x.shape)
    with pytest.raises(ValueError, match=rf"^{name}: score must have shape \(5, 3\) \(B, D\), got \(1, 3\)"):
        jacrev(jacrev(f(score[:1])))(x)


def test_none_for_a_required_tensor_is_refused_naming_it():
    """None where the schema's Tensor is required (the dispatcher lets it through): a ValueError naming the op and
    the argument on every path (the Autograd kernel's requires-grad test too), not an AttributeError."""
    op = _table.OPS["sde_step"]
    args = valid_args(op, "cpu")
    for i in (0, 1):
        bad = list(args)
        bad[i] = None
        for fn in calls(op, "cpu").values():
            assert_raises_naming(fn, bad, ValueError, op, op.schema_args[i].name, r"a tensor \(B, D\), got None$")
        if i:
            bad[0] = args[0].clone().requires_grad_()
            assert_raises_naming(calls(op, "cpu")["autograd"], bad, ValueError, op, "score", "got None")


def edge_calls():
    """Valid calls at the edges of the table's shapes: score_mh_accept's (M + 1)·B rows form (no interior) with M = 0
    and M = 2, B = 0, D = 1, and a B = 1 step_size expanded from a 0-d tensor (stride 0, contiguous)."""
    def r(*shape):
        return torch.rand(*shape, dtype=torch.float64) + 0.1

    def mh(B, rows):
        return r(B, 3), r(B, 3), r(B, 3), r(rows, 3), r(B), r(B), None, 0, 0, 0
    return {"(M + 1)·B rows, M = 0": ("score_mh_accept", mh(5, 5)),
            "(M + 1)·B rows, M = 2": ("score_mh_accept", mh(5, 15)),
            "score_mh_accept B = 0": ("score_mh_accept", mh(0, 0)),
            "leapfrog B = 0": ("leapfrog", (r(0, 3), r(0, 3), r(0, 3), r(0))),
            "leapfrog D = 1": ("leapfrog", (r(5, 1), r(5, 1), r(5, 1), r(5))),
            "mala_propose D = 1": ("mala_propose", (r(5, 1), r(5, 1), r(5), r(5, 1), 0, 0, 0)),
            "expanded B = 1 step_size": ("leapfrog", (r(1, 3), r(1, 3), r(1, 3), r(()).expand(1)))}


@pytest.mark.parametrize("case", list(edge_calls()))
def test_valid_edge_calls_are_accepted(case):
    """Each edge call goes through every path (`calls`): a tightening of a shape test or of a rule fails here."""
    name, args = edge_calls()[case]
    op = _table.OPS[name]
    for fn in calls(op, "cpu").values():
        out = fn(*args)
        assert (out if isinstance(out, torch.Tensor) else out[0]).shape == args[0].shape


def test_energy_lsq_needs_o_at_most_d():
    """mlp_net_energy_lsq's state is the input's first O columns: O = D + 1 outputs is refused by the op's rule (the
    C glue refused it without the op's name; the reference broadcast (B, D) against (B, O))."""
    op = _table.OPS["mlp_net_energy_lsq"]
    x, params, act, c, v, sigma, z = valid_args(op, "cpu")
    B, D, H = x.shape[0], x.shape[1], params[0].shape[0]
    wide = params[:2] + [torch.randn(D + 1, H, dtype=x.dtype), torch.randn(D + 1, dtype=x.dtype)] + params[4:]
    bad = (x, wide, act, torch.randn(B, D + 1, dtype=x.dtype), v, sigma, torch.randn(B, D + 1, dtype=x.dtype))
    for fn in calls(op, "cpu").values():
        with pytest.raises(ValueError, match=r"^mlp_net_energy_lsq: needs O <= D .*, got O = 4, D = 3$"):
            fn(*bad)

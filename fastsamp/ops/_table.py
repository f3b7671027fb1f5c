"""The op table: one spec per backend op, the single source of its signature.

Each entry gives the backend signature of docs/backend-contract.md (ordered arguments with their
kinds and shapes), the outputs (shapes and dtypes) and the argument order of the C entry points
`fastsamp._C.cpu_<op>` / `cuda_<op>`. From it are generated (the source by `_codegen.py`):

* the cpp and cuda glue (`fastsamp/backends/cpp.py`, `cuda.py`: `glue_source`),
* the `torch.library` schema, fake (meta) implementation and kernels of the registered op
  `torch.ops.fastsamp.<op>` (`fastsamp/ops/_library.py`), with the check of its arguments (`check_source`:
  shapes, dtypes, devices, contiguity),
* the consistency test of the public functions, the reference and every backend (tests/test_op_table.py).

Adding an op or an argument is one entry (or one token) here. The notation, parsed at import:

    args:  "name:kind" separated by spaces, kinds:
           state          the (B, D) tensor whose dtype and device every other tensor shares
           (K,D)          a tensor of that shape (dims are names or expressions of earlier names);
                          a suffix "?" makes it optional (None: pointer 0), "f64" fixes its dtype to float64
           float int bool python scalars (C double / int64 / bool)
           threads        an int thread count for a kernel that takes it as an argument (0: torch's intra-op count)
           u64            seed / offset / chain_offset: C uint64; int64 in the schema (two's complement). Also
                          a one-element int64 tensor on the op's device, read inside the kernel (CUDA graphs):
                          in the schema a trailing `Tensor? <name>_t=None` (the int argument is then 0); the
                          cuda C entry points take (value, pointer or 0) pairs, the cpu glue reads it on the host
           tensors        a list of tensors (Tensor[]); "tensors[(H,D)(H,)*(H,H)(H,)]" gives their shapes (the
                          registered op's check): the first ones, then the group after `*` repeated to the end
                          of the list; "tensors{dims:F,H,L,act}[(F,)(H,D+2*F)*L(H,H)]" a list of blocks, one per
                          4 ints of the ints argument `dims` (named F, H, L, act in the block's shapes), each
                          the first shapes and the group `*L` times (a count the names give). The bracket holds
                          one or more "(dims)" shapes, then optionally `*` (a count name with `{...}`, none
                          without) and one or more shapes; a list without a layout has only its dtypes, devices
                          and contiguity checked
           ints floats    a list of python ints / floats (int[] / float[])
           dtype device   of the outputs, for ops without a state tensor
           out            an optional preallocated output (not in the schema: registered ops are functional)
    outs:  "name:(B,D)" with an optional dtype suffix (bool, f64), "=arg" (the output is that argument when
           it is given) or "?arg" (present only when that argument is given / true: None otherwise);
           "name:[arg]" a list of tensors shaped like the list argument `arg`
    c:     the C argument order ("dtype" = 0 float32 / 1 float64, dims by name, other tokens literal); the
           outputs it does not name follow in order, then n_threads (cpu; unless c names a `threads`
           argument) or the stream (cuda); ops without a state tensor (normal, uniform) take the dtype and
           device of their first output. A list of tensors (argument or output) passes its pointers, or
           `name[i]` one of them, `name[a:b:c]` a slice; ints / floats lists pass their values;
           `Struct(tok,...)` passes `_C.Struct(...)` built from those tokens (the policy kernels'
           PolicyLangevin).
    kernel: the C entry point's name when it is not the op's (cpu_<kernel>): ops that are variants of one
           kernel (the policy kernels with the Langevin term).
    guard: the condition under which the glue calls the kernel, the outputs zeroed otherwise (gradients
           summed over an empty batch); default: some output has elements.
    rule:  (condition, message) a shape rule of the registered op's check beyond the arguments' shapes (an
           f-string message of the dims), e.g. score_mh_accept's rows of score_prop.
    backends: the compiled backends that implement the op (the reference implements every op but
           policy_log_pf_backward: `reference=False`).
    public: the fastsamp.ops function that calls it (None: internal, e.g. a backward kernel), and renames of
           arguments there ({backend name: public name or None when the public function takes no such argument}).
    grad:  the inputs the registered op differentiates (fastsamp/ops/_autograd.py has the formula); an op
           without grad raises when one of its inputs requires grad.
    functional: False for a kernel that writes into one of its inputs (policy_langevin_log_pf computes the
           target's scores into `scores`): not registered (a registered op's inputs are read-only).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ._codegen import c_names as c_names
from ._codegen import check_source as check_source
from ._codegen import define, glue_source
from ._codegen import outputs_source as outputs_source
from ._codegen import requires_grad_source as requires_grad_source

U64_MASK = 2**64 - 1
SCALARS = {"float": "float", "int": "int", "threads": "int", "bool": "bool", "u64": "SymInt", "tensors": "Tensor[]",
           "ints": "int[]", "floats": "float[]",
           "dtype": "ScalarType", "device": "Device"}


@dataclass(frozen=True)
class Arg:
    name: str
    kind: str               # "state", "tensor", "out" or a key of SCALARS
    shape: tuple = ()       # dims of a tensor (names or python expressions)
    optional: bool = False
    dtype: str = "x"        # "x" (the state's), "f64"
    layout: tuple = ()      # a list's shapes: (the first ones, the repeated group, its count or "": to the end)
    per: tuple = ()         # a list of blocks: (the ints argument, the names of its ints per block)


@dataclass(frozen=True)
class Out:
    name: str
    shape: tuple
    dtype: str = "x"        # "x", "bool", "f64"
    given_by: str | None = None
    present_if: str | None = None
    like_list: str | None = None  # a list of tensors shaped like this list argument (Tensor[])


@dataclass(frozen=True)
class Op:
    name: str
    args: tuple
    outs: tuple
    c: tuple
    backends: tuple
    public: str | None
    renames: dict = field(default_factory=dict)
    grad: tuple = ()
    dims: str | None = None  # python statements defining the dims (default: from the first tensor having each)
    reference: bool = True   # fastsamp/ops/reference.py (or, for normal / uniform, ops/random.py) implements it
    kernel: str = ""         # the C entry point's name (default: the op's)
    guard: str | None = None  # when the glue calls the kernel (else it zeroes the outputs); default: outputs nonempty
    functional: bool = True  # False: the kernel writes into an input (not registered)
    rule: tuple = ()         # (condition, message): a shape rule beyond the args' shapes (f-string message)

    def arg(self, name: str) -> Arg:
        return next(a for a in self.args if a.name == name)

    @property
    def state(self) -> Arg | None:
        return next((a for a in self.args if a.kind == "state"), None)

    @property
    def u64_args(self) -> tuple:
        """The seed / offset / chain offset arguments (each with a tensor form, `<name>_t` in the schema)."""
        return tuple(a for a in self.args if a.kind == "u64")

    @property
    def schema_args(self) -> tuple:
        """The arguments of the registered op (all but a preallocated `out`)."""
        return tuple(a for a in self.args if a.kind != "out")

    def schema(self) -> str:
        """The torch.library schema, e.g. "gmm_score(Tensor x, ..., float sigma2) -> (Tensor, Tensor)"."""
        def typ(a):
            if a.kind in ("state", "tensor"):
                return "Tensor?" if a.optional else "Tensor"
            return SCALARS[a.kind]
        args = ", ".join(f"{typ(a)} {a.name}" for a in self.schema_args)
        args += "".join(f", Tensor? {a.name}_t=None" for a in self.u64_args)
        outs = ", ".join("Tensor[]" if o.like_list else "Tensor?" if o.present_if else "Tensor" for o in self.outs)
        return f"{self.name}({args}) -> " + (outs if len(self.outs) == 1 else f"({outs})")


_KINDS = "state|floats|float|ints|int|threads|bool|u64|tensors|dtype|device|out"
_ARG = re.compile(rf"(\w+):(?:({_KINDS})(?:\{{([^}}]*)\}})?(?:\[([^\]]*)\])?|\(([^)]*)\)(\?)?(f64)?)$")
_SHAPES = r"(?:\([^()]*\))+"
_LAYOUT = re.compile(rf"({_SHAPES})(?:\*([A-Za-z_]\w*)?({_SHAPES}))?$")  # first shapes, `*`, count, group
_PER = re.compile(r"(\w+):(\w+(?:,\w+)*)$")
_OUT = re.compile(r"(\w+):(?:\(([^)]*)\)(bool|f64)?(?:=(\w+)|\?(\w+))?|\[(\w+)\])$")


def _dims(text: str) -> tuple:
    return tuple(d.strip() for d in text.split(",") if d.strip())


def _tokens(text: str, pattern: re.Pattern, what: str):
    """The match groups of each space-separated token of `text` (a ValueError naming a token `pattern` rejects)."""
    for token in text.split():
        m = pattern.match(token)
        if m is None:
            raise ValueError(f"bad {what} spec {token!r}")
        yield m.groups()


def _layout(name: str, kind: str, layout: str, per: str | None) -> Arg:
    """A list argument with a layout (`tensors[...]`, `tensors{ints:names}[...]`), validated (a ValueError naming
    the argument: a layout on another kind, a malformed bracket, a count without `{...}` or missing with it)."""
    m, p = _LAYOUT.match(layout), per and _PER.match(per)
    if kind != "tensors" or m is None or (per is not None and p is None):
        raise ValueError(f"bad layout {layout!r}{'' if per is None else f' per {per!r}'} of {name} ({kind})")
    first, count, group = m.groups()
    names = tuple(p[2].split(",")) if p else ()
    if bool(count) != bool(p) or (count and count not in names):
        raise ValueError(f"bad layout {layout!r} of {name}: a count after `*` exactly with a list of blocks "
                         f"(`{{ints:names}}`), one of its names")
    shapes = [tuple(map(_dims, re.findall(r"\(([^)]*)\)", part or ""))) for part in (first, group)]
    return Arg(name, kind, layout=(*shapes, count or ""), per=(p[1], names) if p else ())


def _args(text: str) -> tuple:
    out = []
    for name, kind, per, layout, shape, opt, f64 in _tokens(text, _ARG, "argument"):
        if kind == "state":
            out.append(Arg(name, "state", ("B", "D")))
        elif layout is not None or per is not None:
            out.append(_layout(name, kind, layout or "", per))
        elif kind:
            out.append(Arg(name, kind))
        else:
            out.append(Arg(name, "tensor", _dims(shape), bool(opt), "f64" if f64 else "x"))
    ints = {a.name for a in out if a.kind == "ints"}
    for a in out:
        if a.per and a.per[0] not in ints:
            raise ValueError(f"bad layout of {a.name}: its blocks follow {a.per[0]}, not an ints argument")
    return tuple(out)


def _outs(text: str) -> tuple:
    return tuple(Out(name, _dims(shape or ""), dtype or "x", given, present, like)
                 for name, shape, dtype, given, present, like in _tokens(text, _OUT, "output"))


def _op(name, args, outs, c, backends=("cpp",), public="", renames=None, grad="", dims=None, reference=True,
        kernel=None, guard=None, functional=True, rule=()) -> Op:
    return Op(name, _args(args), _outs(outs), tuple(c.split()), tuple(backends),
              name if public == "" else public, renames or {}, tuple(grad.split()), dims, reference, kernel or name,
              guard, functional, rule)


_NOISE = "noise:(B,D)? seed:u64 offset:u64 chain_offset:u64"
_C_NOISE = "noise B D seed offset chain_offset"
_MIX = "x:state means:(K,D) log_weights:(K,) variances:(K,)"
_ACCEPT = "x_new:(B,D) score_new:(B,D) accepted:(B,)bool log_alpha:(B,)"
# the accept ops: u None draws u in-kernel, ops.uniform(seed, offset, B, chain_offset=chain_offset)'s bits
_DRAW = "seed:u64 offset:u64 chain_offset:u64"
_DRAW_C = "seed offset chain_offset"
_ALL = ("cpp", "triton")
# the DriftNet policy kernels (fastsamp/ops/trajectory.py): temb and the layers params = [ws, bs, wo, bo, W_1, b_1,
# ..., W_L, b_L] (trajectory.PolicyParams.tensors()), passed to C as temb, ws, bs, [W_k], [b_k], wo, bo
_POLICY_NET = "temb:(T,H) params:tensors[(H,D)(H,)(2*D,H)(2*D,)*(H,H)(H,)]"
_POLICY_NET_C = "temb params[0] params[1] params[4::2] params[5::2] params[2] params[3]"
_POLICY_GRADS_C = "g_temb g_params[0] g_params[1] g_params[4::2] g_params[5::2] g_params[2] g_params[3]"
_POLICY_DIMS = "T, H = temb.shape; D = params[0].shape[1]"
_POLICY_BACKWARD_OUTS = "g_temb:(T,H) g_params:[params] g_lgv:(T,W)?lgv"
# the hidden activations a rollout keeps for log p_F's backward (keep_activations; trajectory.policy_rollout):
# act_hidden (T, N, B, H), N = 2(L+1): u_k = gelu(z_k) at [i][k] and gelu'(z_k) at [i][L+1+k]
_KEPT_OUTS = "act_hidden:(T,N,B,H)?keep_activations"
_KEPT_DIMS = "; N = len(params) - 2"
# the Langevin term: lgv (T, W) its scale (W = 1 or D), scores (T, B, D) ∇log R at the states, the target whose
# score the kernel computes (target_kind 0: none, the scores are given); the backward kernels take the scores
_LANGEVIN = "lgv:(T,W) lgv_clip:float"
_LANGEVIN_TARGET = "target_kind:int target_means:(K,D)? target_param:float"
_LANGEVIN_C = "PolicyLangevin(lgv,W,lgv_clip,scores,target_kind,target_means,K,target_param)"
_LANGEVIN_DIMS = "; W = 0 if lgv is None else lgv.shape[1]; K = 0 if target_means is None else target_means.shape[0]"
_BACKWARD_LANGEVIN = "lgv:(T,W)? lgv_clip:float scores:(T,B,D)?"  # optional: None without the term
_BACKWARD_LANGEVIN_C = "PolicyLangevin(lgv,W,lgv_clip,scores,0,0,0,0) g_lgv"
# score networks (fastsamp/ops/mlp.py): flat per-network lists of layer tensors, dims and scalars, and an
# optional mixture; the public functions take ScoreNet / MixtureScore objects instead. Per network 4 dims
# [F, H, L, act] (n_freq, hidden width, hidden layers, activation), 4 scalars [t, α, σ², σ_d²] and the tensors
# ω (F,), m (D,), W_0 (H, D + 2F), b_0, W_out (D, H), b_out (an energy network's too: its f maps D to D), then
# (W_k, b_k) per hidden layer (csrc/cpu/mlp_sum.h: parse_nets)
# the activation codes the network kernels know (ops.mlp.ACTIVATIONS: 0 GELU, 1 SiLU): a registered op's check
# refuses any other value of an `act` int (mlp_net's argument, each 4th int of dims)
ACTIVATION_CODES = (0, 1)
_NETS = "params:tensors{dims:F,H,L,act}[(F,)(D,)(H,D+2*F)(H,)(D,H)(D,)*L(H,H)(H,)] dims:ints scalars:floats"
_SCORE_SUM = f"x:state {_NETS} means:(K,D)? log_weights:(K,)? variances:(K,)? mix_alpha:float mix_sigma2:float"
_SCORE_SUM_KW = {"renames": {"params": None, "means": None, "log_weights": None, "variances": None},
                 "rule": ("len(scalars) == len(dims)", "scalars must hold 4 values per network (t, α, σ², σ_d²), "
                          "one per int of dims: got {len(scalars)} for {len(dims)}")}
# sums with energy networks: the same lists and one flag per network (1: an EnergyNet)
_ENERGY_SUM = (f"x:state {_NETS} energy:ints means:(K,D)? log_weights:(K,)? variances:(K,)? mix_alpha:float "
               "mix_sigma2:float")
_ENERGY_SUM_KW = {"renames": {**_SCORE_SUM_KW["renames"], "energy": None},
                  "rule": ("len(scalars) == len(dims) and len(energy) in (0, len(dims) // 4)",
                           "scalars must hold 4 values per network (t, α, σ², σ_d²) and energy one flag per network "
                           "(or none): got {len(scalars)} scalars and {len(energy)} flags for {len(dims)} dims")}
# their C orders (the layer pointers, dims and scalars as lists; K = 0 without a mixture)
_SCORE_SUM_C = "dtype x B D params dims scalars means log_weights variances K mix_alpha mix_sigma2"
_ENERGY_SUM_C = "dtype x B D params dims scalars energy means log_weights variances K mix_alpha mix_sigma2"
_MLP_MALA_C = "step_size n_steps n_trapezoid seed offset chain_offset mh"
_MLP_HMC_C = "step_size n_steps n_leapfrog seed offset chain_offset mh damping"
# one MLP, the training pass of the score networks (fastsamp/ops/mlp.py: mlp_net): its input rows x (B, D) and its
# layers packed by _layers.packed, [W_in (H, D), b_in, W_out (O, H), b_out, W_1, b_1, ..., W_L, b_L]; act: the code
# of ops.mlp.ACTIVATIONS
_MLP_NET = "x:state params:tensors[(H,D)(H,)(O,H)(O,)*(H,H)(H,)] act:int"
_MLP_NET_C = "dtype x B D H O params act"
_MLP_NET_DIMS = "B, D = x.shape; H = params[0].shape[0]; O = params[2].shape[0]"
_MLP_KEPT = "act_hidden:(N,B,H)"  # u_k at [k], act'(z_k) at [L+1+k] (mlp_net_train; N = 2(L+1) = len(params) - 2)

OPS: dict[str, Op] = {op.name: op for op in [
    _op("gmm_score", f"{_MIX} alpha:float sigma2:float", "score:(B,D) logp:(B,)",
        "dtype x means log_weights variances B D K alpha sigma2", _ALL + ("cuda",),
        grad="x means log_weights variances"),
    _op("sde_step", f"x:state score:(B,D) extra_drift:(B,D)? {_NOISE} a:float c_s:float c_n:float out:out",
        "x_new:(B,D)=out", f"dtype x score extra_drift {_C_NOISE} a c_s c_n", _ALL + ("cuda",),
        public="reverse_sde_step", grad="x score extra_drift noise"),
    _op("guided_sde_step", f"x:state score:(B,D) score_shift:(B,D) v:(B,D) {_NOISE} a:float c_s:float c_v:float "
        "c_diff:float c_n:float out:out", "x_new:(B,D)=out",
        f"dtype x score score_shift v {_C_NOISE} a c_s c_v c_diff c_n", _ALL, grad="x score score_shift v noise"),
    _op("mala_propose", f"x:state score:(B,D) step_size:(B,) {_NOISE} out:out", "x_prop:(B,D)=out",
        f"dtype x score step_size {_C_NOISE}", _ALL, grad="x score step_size noise"),
    _op("line_points", "x:state x_prop:(B,D) n:int out:out", "points:(n-1,B,D)=out", "dtype x x_prop B D n", _ALL,
        grad="x x_prop"),
    # score_prop (R, D): R = B, s(x'), with the M interior score sets in interior; or, interior None, R = (M + 1)·B
    # rows: s(x') then the M sets, the scores of one batch [x'; line_points] (the C kernels read the sets after
    # score_prop's first B rows when interior is 0)
    _op("score_mh_accept", "x:state x_prop:(B,D) score:(B,D) score_prop:(R,D) step_size:(B,) u:(B,)? "
        f"interior:(M,B,D)? {_DRAW} x_out:out score_out:out",
        "x_new:(B,D)=x_out score_new:(B,D)=score_out accepted:(B,)bool log_alpha:(B,)",
        f"dtype x x_prop score score_prop step_size u {_DRAW_C} interior M B D", _ALL + ("cuda",),
        renames={"interior": "interior_scores"},
        dims="B, D = x.shape; R = score_prop.shape[0]; M = (interior.shape[0] if interior is not None else "
             "R // B - 1 if B else 0)",
        rule=("R == B if interior is not None else R == (M + 1) * B and M >= 0",
              "score_prop must have B rows beside interior, else (M + 1)·B (M >= 0 interior sets), got {R} rows "
              "for B = {B}")),
    _op("energy_mh_accept", "x:state x_prop:(B,D) score:(B,D) score_prop:(B,D) logp:(B,) logp_prop:(B,) "
        f"step_size:(B,) u:(B,)? {_DRAW}",
        "x_new:(B,D) score_new:(B,D) logp_new:(B,) accepted:(B,)bool log_alpha:(B,)",
        f"dtype x x_prop score score_prop logp logp_prop step_size u {_DRAW_C} B D", _ALL),
    _op("leapfrog", "x:state p:(B,D) score:(B,D) step_size:(B,)", "x_next:(B,D) p_half:(B,D)",
        "dtype x p score step_size B D", _ALL, grad="x p score step_size"),
    _op("leapfrog_finish", "x:state x_next:(B,D) p_half:(B,D) score:(B,D) score_next:(B,D) step_size:(B,) "
        "delta_logp:(B,)", "p_next:(B,D) delta_logp_next:(B,)",
        "dtype x x_next p_half score score_next step_size delta_logp B D", _ALL,
        grad="x x_next p_half score score_next step_size delta_logp"),
    _op("hmc_accept", "x:state x_prop:(B,D) score:(B,D) score_prop:(B,D) p:(B,D) p_prop:(B,D) delta_logp:(B,) "
        f"u:(B,)? {_DRAW}", _ACCEPT, f"dtype x x_prop score score_prop p p_prop delta_logp u {_DRAW_C} B D", _ALL),
    _op("momentum_refresh", f"p:state damping:float {_NOISE}", "p_new:(B,D)", f"dtype p damping {_C_NOISE}", _ALL,
        grad="p noise"),
    _op("gmm_mala", f"{_MIX} step_size:(B,) n_steps:int n_trapezoid:int alpha:float sigma2:float seed:u64 "
        "offset:u64 chain_offset:u64 mh:int", "x_new:(B,D) accept_rate:(B,)",
        "dtype x means log_weights variances step_size B D K n_steps n_trapezoid alpha sigma2 seed offset "
        "chain_offset mh", _ALL + ("cuda",)),
    _op("gmm_hmc", f"{_MIX} step_size:(B,) n_steps:int n_leapfrog:int alpha:float sigma2:float seed:u64 "
        "offset:u64 chain_offset:u64 mh:int damping:float", "x_new:(B,D) accept_rate:(B,)",
        "dtype x means log_weights variances step_size B D K n_steps n_leapfrog alpha sigma2 seed offset "
        "chain_offset mh damping", _ALL),
    _op("em_step_logprob", f"x:state drift:(B,D) log_var:(B,D)? x_next:(B,D)? {_NOISE} h:float s2:float e2:float "
        "c:float b2:float", "x_next_out:(B,D)=x_next log_pf:(B,) log_pb:(B,)",
        f"dtype x drift log_var x_next {_C_NOISE} h s2 e2 c b2", _ALL + ("cuda",)),
    _op("em_step_logprob_backward", "x:state drift:(B,D) log_var:(B,D)? x_next:(B,D) g_x_next:(B,D)? "
        "g_log_pf:(B,) g_log_pb:(B,) h:float s2:float e2:float c:float b2:float reparam:bool want_g_x_next:bool",
        "g_x:(B,D) g_drift:(B,D) g_log_var:(B,D)?log_var g_x_next_out:(B,D)?want_g_x_next",
        "dtype x drift log_var x_next g_x_next g_log_pf g_log_pb B D h s2 e2 c b2 reparam", _ALL + ("cuda",),
        public=None),
    _op("policy_rollout", f"x0:(B,D)? {_POLICY_NET} ts:(T,)f64 batch_size:int sigma:float h:float explore:float "
        "clip:float seed:u64 chain_offset:u64 n_threads:threads keep_activations:bool",
        f"states:(T+1,B,D) log_pf:(B,T) log_pb:(B,T) {_KEPT_OUTS}",
        f"dtype x0 {_POLICY_NET_C} ts B D H T sigma h explore clip seed chain_offset n_threads",
        renames={"x0": "x0", "params": None, "ts": None, "clip": None},
        dims=_POLICY_DIMS + "; B = batch_size" + _KEPT_DIMS),
    _op("policy_log_pf", f"states:(T+1,B,D) {_POLICY_NET} sigma:float h:float clip:float n_threads:threads",
        "log_pf:(B,T)", f"dtype states {_POLICY_NET_C} B D H T sigma h clip n_threads",
        renames={"params": None, "clip": None}, dims=_POLICY_DIMS + "; B = states.shape[1]"),
    _op("policy_log_pf_backward", f"states:(T+1,B,D) {_POLICY_NET} g_log_pf:(B,T) sigma:float h:float clip:float "
        f"n_threads:threads {_BACKWARD_LANGEVIN} act_hidden:(T,N,B,H)?", _POLICY_BACKWARD_OUTS,
        f"dtype states {_POLICY_NET_C} g_log_pf B D H T sigma h clip n_threads {_POLICY_GRADS_C} "
        f"{_BACKWARD_LANGEVIN_C} act_hidden", public=None,
        dims=_POLICY_DIMS + "; B = states.shape[1]; W = 0 if lgv is None else lgv.shape[1]" + _KEPT_DIMS,
        reference=False, guard="B > 0"),  # autograd differentiates the reference
    # internal (C++ only): the rollout and log_pf with the Langevin term (the reference is the sampler's eager
    # path), and the adjoint sweep of the reparameterised rollout (the reference is differentiated by autograd);
    # registered, but for policy_langevin_log_pf, which writes the target's scores into `scores` when it computes
    # them (target_kind != 0)
    _op("policy_langevin_rollout", f"x0:(B,D)? {_POLICY_NET} {_LANGEVIN} ts:(T,)f64 batch_size:int sigma:float "
        f"h:float explore:float clip:float seed:u64 chain_offset:u64 {_LANGEVIN_TARGET} n_threads:threads "
        "keep_activations:bool", f"states:(T+1,B,D) log_pf:(B,T) log_pb:(B,T) scores:(T,B,D) {_KEPT_OUTS}",
        f"dtype x0 {_POLICY_NET_C} ts B D H T sigma h explore clip seed chain_offset n_threads states log_pf log_pb "
        f"act_hidden {_LANGEVIN_C}", public=None,
        dims=_POLICY_DIMS + "; B = batch_size" + _LANGEVIN_DIMS + _KEPT_DIMS, reference=False,
        kernel="policy_rollout"),
    _op("policy_langevin_log_pf", f"states:(T+1,B,D) {_POLICY_NET} {_LANGEVIN} scores:(T,B,D) {_LANGEVIN_TARGET} "
        "sigma:float h:float clip:float n_threads:threads", "log_pf:(B,T)",
        f"dtype states {_POLICY_NET_C} B D H T sigma h clip n_threads log_pf {_LANGEVIN_C}", public=None,
        dims=_POLICY_DIMS + "; B = states.shape[1]" + _LANGEVIN_DIMS, reference=False, kernel="policy_log_pf",
        functional=False),
    _op("policy_reparam_backward", f"states:(T+1,B,D) {_POLICY_NET} ts:(T,)f64 g_states:(T+1,B,D)? g_log_pb:(B,T)? "
        f"sigma:float h:float clip:float n_threads:threads {_BACKWARD_LANGEVIN}", _POLICY_BACKWARD_OUTS,
        f"dtype states {_POLICY_NET_C} ts g_states g_log_pb B D H T sigma h clip n_threads {_POLICY_GRADS_C} "
        f"{_BACKWARD_LANGEVIN_C}", public=None,
        dims=_POLICY_DIMS + "; B = states.shape[1]; W = 0 if lgv is None else lgv.shape[1]", reference=False,
        guard="B > 0"),
    _op("mlp_score", f"{_SCORE_SUM}", "score:(B,D)", _SCORE_SUM_C, _ALL, **_SCORE_SUM_KW),
    _op("mlp_mala", f"{_SCORE_SUM} step_size:(B,) n_steps:int n_trapezoid:int seed:u64 offset:u64 chain_offset:u64 "
        "mh:int", "x_new:(B,D) accept_rate:(B,)", f"{_SCORE_SUM_C} {_MLP_MALA_C}", _ALL, **_SCORE_SUM_KW),
    _op("mlp_hmc", f"{_SCORE_SUM} step_size:(B,) n_steps:int n_leapfrog:int seed:u64 offset:u64 chain_offset:u64 "
        "mh:int damping:float", "x_new:(B,D) accept_rate:(B,)", f"{_SCORE_SUM_C} {_MLP_HMC_C}", _ALL,
        **_SCORE_SUM_KW),
    _op("mlp_energy", f"{_ENERGY_SUM}", "score:(B,D) logp:(B,)", _ENERGY_SUM_C, _ALL, **_ENERGY_SUM_KW),
    _op("mlp_energy_mala", f"{_ENERGY_SUM} step_size:(B,) n_steps:int n_trapezoid:int seed:u64 offset:u64 "
        "chain_offset:u64 mh:int", "x_new:(B,D) accept_rate:(B,)", f"{_ENERGY_SUM_C} {_MLP_MALA_C}", _ALL,
        **_ENERGY_SUM_KW),
    _op("mlp_energy_hmc", f"{_ENERGY_SUM} step_size:(B,) n_steps:int n_leapfrog:int seed:u64 offset:u64 "
        "chain_offset:u64 mh:int damping:float", "x_new:(B,D) accept_rate:(B,)", f"{_ENERGY_SUM_C} {_MLP_HMC_C}",
        _ALL, **_ENERGY_SUM_KW),
    _op("mlp_net", _MLP_NET, "out:(B,O)", _MLP_NET_C, _ALL, dims=_MLP_NET_DIMS),
    # the C++ training forward: out and the hidden activations that its backward reads instead of recomputing them
    # (the Triton backward recomputes them in registers and takes act_hidden unread)
    _op("mlp_net_train", _MLP_NET, f"out:(B,O) {_MLP_KEPT}", _MLP_NET_C, public=None,
        dims=_MLP_NET_DIMS + _KEPT_DIMS),
    _op("mlp_net_backward", f"{_MLP_NET} g_out:(B,O) want_g_x:bool {_MLP_KEPT}?",
        "g_x:(B,D)?want_g_x g_params:[params]", f"{_MLP_NET_C} g_out act_hidden g_x g_params", _ALL, public=None,
        dims=_MLP_NET_DIMS + _KEPT_DIMS, guard="B > 0"),
    _op("mlp_net_lsq", f"{_MLP_NET} c:(B,O) k:(B,)", "loss:(B,) g_params:[params]", f"{_MLP_NET_C} c k", _ALL,
        dims=_MLP_NET_DIMS, guard="B > 0"),
    _op("mlp_net_energy_lsq", f"{_MLP_NET} c:(B,O) v:(B,) sigma:(B,) z:(B,O)", "loss:(B,) g_params:[params]",
        f"{_MLP_NET_C} c v sigma z", _ALL, dims=_MLP_NET_DIMS, guard="B > 0",
        rule=("O <= D", "needs O <= D (the state is the input's first O columns), got O = {O}, D = {D}")),
    _op("normal", "seed:u64 offset:u64 B:int D:int dtype:dtype device:device chain_offset:u64", "xi:(B,D)",
        "dtype seed offset chain_offset B D", _ALL + ("cuda",), dims=""),
    _op("uniform", "seed:u64 offset:u64 B:int dtype:dtype device:device chain_offset:u64", "u:(B,)",
        "dtype seed offset chain_offset B", _ALL + ("cuda",), dims=""),
]}


def registered() -> list[Op]:
    """The ops registered as torch.ops.fastsamp.<name> (fastsamp/ops/_library.py): every functional op (the public
    ops, their backward kernels and the internal policy kernels). An output that is a given input
    (em_step_logprob's x_next) is a copy in the registered op; an output present only with some argument is
    `Tensor?`."""
    return [op for op in OPS.values() if op.functional]


# ------------------------------------------------------------------ code generation (fastsamp/ops/_codegen.py)

def install_glue(namespace: dict, target: str, backend: str) -> list[str]:
    """Define in `namespace` (a backend module's globals: its `_C`, `_dt`, `_p`, `_u64`, `_threads`, `torch` and,
    for cuda, `_launch`) the generated function of every op with a C entry point on `backend`; returns their names."""
    names = []
    for op in OPS.values():
        if backend in op.backends:
            define(glue_source(op, target), f"<fastsamp glue {target}_{op.name}>", namespace)
            names.append(op.name)
    return names

"""Python source generated from an op's spec (`_table.Op`): the backend glue (`glue_source`, run by
`_table.install_glue`), the fake implementation of the registered op (`outputs_source`) and its requires-grad
test (`requires_grad_source`); `define` runs such source."""
from __future__ import annotations

import linecache
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._table import Op, Out


def _dims_source(op: Op) -> list[str]:
    """Statements defining every dim the outputs and the C call use."""
    if op.dims is not None:
        return [s.strip() for s in op.dims.split(";") if s.strip()]
    lines, known = [], set()
    for a in op.args:
        if a.kind not in ("state", "tensor"):
            continue
        names = [(i, d) for i, d in enumerate(a.shape) if d.isidentifier() and d not in known]
        if not names:
            continue
        if a.kind == "state":
            lines.append(f"{a.shape[0]}, {a.shape[1]} = {a.name}.shape")
        else:
            for i, d in names:
                size = f"{a.name}.shape[{i}]"
                lines.append(f"{d} = 0 if {a.name} is None else {size}" if a.optional else f"{d} = {size}")
        known.update(d for _, d in names)
    return lines


def _like_arg(op: Op):
    """The argument whose dtype ("x") and device the others and the outputs share: the state, else the first required
    tensor of that dtype (None: a factory op, with `dtype` and `device` arguments)."""
    return op.state or next((a for a in op.args if a.kind == "tensor" and not a.optional and a.dtype == "x"), None)


def _like(op: Op) -> tuple[str, str]:
    """Expressions of the outputs' dtype ("x") and device: `_like_arg`'s, else the `dtype` and `device` arguments."""
    like = _like_arg(op)
    return ("dtype", "device") if like is None else (f"{like.name}.dtype", f"{like.name}.device")


def _alloc(op: Op, o: Out, functional: bool) -> str:
    """The expression allocating output o (functional: a fresh tensor even where the glue reuses an input)."""
    st = op.state
    if o.like_list:
        return f"[torch.empty_like(t) for t in {o.like_list}]"
    if o.dtype == "x" and st is not None and o.shape == st.shape:
        new = f"torch.empty_like({st.name})"
    else:
        shape = ", ".join(o.shape) + ("," if len(o.shape) == 1 else "")
        dtype, device = _like(op)
        dtype = {"x": dtype, "bool": "torch.bool", "f64": "torch.float64"}[o.dtype]
        new = f"torch.empty(({shape}), dtype={dtype}, device={device})"
    if o.given_by and not functional:
        return f"{new} if {o.given_by} is None else {o.given_by}"
    if o.present_if:
        a = op.arg(o.present_if)
        cond = o.present_if if a.kind == "bool" else f"{o.present_if} is not None"
        return f"{new} if {cond} else None"
    return new


def signature(op: Op, functional: bool = False) -> str:
    """The backend signature, or (functional) the schema's: no `out`, the tensor forms of u64 arguments last."""
    if functional:
        return ", ".join([a.name for a in op.schema_args] + [f"{a.name}_t=None" for a in op.u64_args])
    return ", ".join(a.name + ("=None" if a.kind == "out" else "") for a in op.args)


def _check_source(op: Op, devices: bool) -> list[str]:
    """Statements checking the schema arguments of a registered op against the table, defining the dims on the way:
    every tensor's shape (where reading the dims fails, the ndim of the tensors they read), dtype (the anchor's,
    `_like_arg`, float32 or float64; "f64" tensors float64), contiguity (the kernels read `data_ptr()` as dense
    rows) and, with `devices`, device (the anchor's; a CPU kernel needs no such test: the dispatcher sends it CPU
    tensors only); a list's tensors likewise (their shapes too where it has a layout, `_layout_source`); each
    activation code (an `act` int, or of a list's blocks: `_act_source`); the op's `rule`; each u64 tensor form (one
    int64 element). One `if` per argument on the good path; on a failure `_arg_error` (fastsamp/ops/_checks.py)
    builds the exception naming the op and the argument (None where a tensor is required: the AttributeError it
    raises on the way, caught around the whole check, at no cost on the good path). Names the source uses: torch,
    _arg_error, _FLOATS (`_library.CHECK_NAMES`)."""
    like, dims = _like_arg(op), _dims_source(op)
    if like is None:  # a factory op (normal, uniform): its device argument (the glue checks a CUDA call's)
        return dims + _tensor_forms_source(op, "", "device")
    read = set(re.findall(r"\w+", " ".join(dims)))
    lines = ["try:"] + [f"    {d}" for d in dims] + ["except (IndexError, ValueError) as _e:"]
    for a in op.args:  # the ndim of the tensors the dims read, a list's length (the dims' only failures)
        if a.kind in ("state", "tensor") and a.name in read:
            test = f"{a.name}.dim() != {len(a.shape)}"
            lines += [f"    if {f'{a.name} is not None and {test}' if a.optional else test}:",
                      f"        raise _arg_error({op.name!r}, {a.name!r}, {a.name}, None, {_spec(a.shape)!r})"]
        elif a.layout and not a.per and a.name in read:
            lines += [f"    {s}" for s in _count_source(op, a)]
    lines += [
        f"    raise ValueError(f'{op.name}: cannot read the dims ({'; '.join(dims)}) from the arguments: {{_e}}') "
        "from None",
        f"_dt = {like.name}.dtype"] + ([f"_dev = {like.name}.device"] if devices else []) + [
        "if _dt not in _FLOATS:",
        f"    raise TypeError(f'{op.name}: {like.name} must be float32 or float64, got {{_dt}}')"]
    device = " or {}.device != _dev" if devices else ""

    def error(name, want, spec, dtype, of, where=""):
        return (f"raise _arg_error({op.name!r}, {name!r}, {name}, {want}, {spec}, {dtype}, {like.name}.device, {of!r}"
                + (f", {where!r})" if where else ")"))

    def where(shape):  # the dims statements that define the dims of `shape`
        names = set(re.findall(r"[A-Za-z_]\w*", " ".join(shape)))
        return "; ".join(d for d in dims if names & set(re.findall(r"\w+", d.split("=")[0])))
    for a in op.args:
        if a.kind == "tensors" and a.layout:
            lines += _layout_source(op, a, device, error, where(sum(a.layout[0] + a.layout[1], ())))
        elif a.kind == "tensors":
            test = f"_t.dtype is not _dt or not _t.is_contiguous(){device.format('_t')}"
            lines += [f"for _t in {a.name}:", f"    if {test}:",
                      "        " + error(a.name, None, None, "_dt", like.name)]
        elif a.kind == "int" and a.name == "act":
            lines += _act_source(op, "act")
        elif a.kind in ("state", "tensor"):
            want, f64 = _spec(a.shape), a.dtype == "f64"
            tests = [f"not {a.name}.is_contiguous()"]
            if a is not like:  # the anchor gives _dt and _dev
                tests = [f"{a.name}.dtype is not {'torch.float64' if f64 else '_dt'}"] + tests + (
                    [f"{a.name}.device != _dev"] if devices else [])
            if f"{', '.join(a.shape)} = {a.name}.shape" not in dims:  # not where the dims come from
                tests.insert(0, f"{a.name}.shape != {want}")
            test = " or ".join(tests)
            lines += [f"if {f'{a.name} is not None and ({test})' if a.optional else test}:",
                      "    " + error(a.name, want, repr(want), "torch.float64" if f64 else "_dt",
                                     None if f64 else like.name, where(a.shape))]
    if op.rule:
        lines += [f"if not ({op.rule[0]}):", f"    raise ValueError(f{op.name + ': ' + op.rule[1]!r})"]
    lines += _tensor_forms_source(op, device, f"{like.name}.device")
    pairs = "".join(f"({a.name!r}, {_spec(a.shape)!r}, {a.name}), " for a in op.schema_args
                    if a.kind in ("state", "tensor") and not a.optional)
    return ["try:"] + [f"    {s}" for s in lines] + [
        "except AttributeError:  # None where a tensor is required (the schema lets it through)",
        f"    for _a, _s, _v in ({pairs}):", "        if _v is None:",
        f"            raise ValueError(f'{op.name}: {{_a}} must be a tensor {{_s}}, got None') from None", "    raise"]


def _act_source(op: Op, what: str) -> list[str]:
    """The test of the activation code bound to `act` (`_table.ACTIVATION_CODES`; `what` names it in the message)."""
    from ._table import ACTIVATION_CODES  # here: _table imports this module
    return [f"if act not in {ACTIVATION_CODES}:",
            f"    raise ValueError(f'{op.name}: {what} must be an activation code {ACTIVATION_CODES} "
            "(fastsamp.ops.mlp.ACTIVATIONS), got {act!r}')"]


def _layout_text(a) -> str:
    first, group, count = a.layout
    return "".join(map(_spec, first)) + (f"*{count}" + "".join(map(_spec, group)) if group else "")


def _count_source(op: Op, a) -> list[str]:
    """The test of a list's length against its layout (the first shapes, then whole groups; not a list of blocks)."""
    first, group, _ = a.layout
    n = f"len({a.name})"
    count = f"{n} < {len(first)} or ({n} - {len(first)}) % {len(group)}" if group else f"{n} != {len(first)}"
    return [f"if {count}:", f"    raise ValueError(f'{op.name}: {a.name} must hold the tensors {_layout_text(a)} "
                            f"(`*`: per layer), got {{{n}}}')"]


def _layout_source(op: Op, a, device: str, error, where: str) -> list[str]:
    """Statements checking list `a` against its layout (the first shapes, then the group repeated per layer; or,
    `a.per`, one such block per `k` ints of the ints argument, `_blocks_source`): its length, and each tensor's
    shape, dtype, contiguity (and `device`) in one test."""
    first, group, _ = a.layout
    n, text = f"len({a.name})", _layout_text(a)

    def test(tensors, shapes):
        return " or ".join(f"{t}.shape != {_spec(d)} or {t}.dtype is not _dt or not {t}.is_contiguous()"
                           + device.format(t) for t, d in zip(tensors, shapes))

    def group_source(start, stop, bad):  # the loop over the groups of list[start:stop]
        names = [f"_g{i}" for i in range(len(group))]
        items = ", ".join(f"{a.name}[_k + {i}]" if i else f"{a.name}[_k]" for i in range(len(group)))
        return [f"for _k in range({start}, {stop}, {len(group)}):", f"    {', '.join(names)} = {items}",
                f"    if {test(names, group)}:", f"        {bad}"]
    if a.per:
        return _blocks_source(op, a, test, group_source, where)
    wants = f"[{', '.join(map(_spec, first))}]" + (
        f" + [{', '.join(map(_spec, group))}] * (({n} - {len(first)}) // {len(group)})" if group else "")
    bad = error(a.name, wants, repr(text), "_dt", _like_arg(op).name, where)
    lines = _count_source(op, a) + [f"if {test([f'{a.name}[{i}]' for i in range(len(first))], first)}:", f"    {bad}"]
    return lines + (group_source(len(first), n, bad) if group else [])


def _blocks_source(op: Op, a, test, group_source, where: str) -> list[str]:
    """A list of blocks (`a.per` = (ints, names)): per k ints of `ints`, bound to `names`, the first shapes and
    `count` groups; one loop over the blocks (the ints' count a multiple of k, the list's length their sum)."""
    (first, group, count), (ints, names) = a.layout, a.per
    k, n, text, like = len(names), f"len({a.name})", _layout_text(a), _like_arg(op).name
    tensors = [f"_t{i}" for i in range(len(first))]  # a block's first tensors, bound once, not list[_b + i] per test
    size = f"{len(first)} + {len(group)} * {count}"
    wants = (f"[_s for {', '.join(names)} in zip(*[iter({ints})] * {k}) for _s in "
             f"[{', '.join(map(_spec, first))}] + [{', '.join(map(_spec, group))}] * {count}]")
    where = (where + "; " if where else "") + f"{', '.join(names)} = each {k} of {ints}: {{{ints}}}"
    bad = (f"raise _arg_error({op.name!r}, {a.name!r}, {a.name}, {wants}, {text!r}, _dt, {like}.device, {like!r}, "
           f"f{where!r})")
    short = (f"raise ValueError(f'{op.name}: {a.name} must hold the tensors {text} per {k} ints of {ints} "
             f"({', '.join(names)}): {{sum({size} for {', '.join(names)} in zip(*[iter({ints})] * {k}))}}, "
             f"got {{{n}}} ({ints}: {{{ints}}})')")
    return [f"if len({ints}) % {k}:",
            f"    raise ValueError(f'{op.name}: {ints} must hold {k} ints ({', '.join(names)}) per block of "
            f"{a.name}, got {{len({ints})}}')",
            "_end = 0", f"for _i in range(0, len({ints}), {k}):", f"    {', '.join(names)} = {ints}[_i:_i + {k}]",
            f"    _b, _end = _end, _end + {size}", f"    if {count} < 0 or _end > {n}:", f"        {short}"] + [
            f"    {s}" for s in (_act_source(op, f"{ints}[{{_i + {names.index('act')}}}]")
                             if "act" in names else [])] + [
            f"    {', '.join(tensors)}{',' * (len(tensors) == 1)} = {a.name}[_b:_b + {len(first)}]",
            f"    if {test(tensors, first)}:",
            f"        {bad}"] + [f"    {s}" for s in group_source(f"_b + {len(first)}", "_end", bad)] + [
            f"if _end != {n}:", f"    {short}"]


def _tensor_forms_source(op: Op, device: str, where: str) -> list[str]:
    """Statements checking each given u64 tensor form: one int64 element (`device`: and on the op's device)."""
    lines = []
    for a in op.u64_args:
        t = f"{a.name}_t"
        lines += [f"if {t} is not None and ({t}.dtype is not torch.int64 or {t}.numel() != 1{device.format(t)}):",
                  f"    raise ValueError(f'{op.name}: {t} must be one int64 element on {{{where}}}, "
                  f"got {{{t}.dtype}} of shape {{tuple({t}.shape)}} on {{{t}.device}}')"]
    return lines


def _spec(shape: tuple) -> str:
    return "(" + ", ".join(shape) + ("," if len(shape) == 1 else "") + ")"


def check_source(op: Op, fname: str, devices: bool, call: str | None = None) -> str:
    """A function of the schema arguments checking them (`_check_source`), then, with `call`, returning
    `call(<the schema arguments>)` (a backend function called without the u64 tensor forms)."""
    body = _check_source(op, devices)
    if call:
        body.append(f"return {call}({', '.join(a.name for a in op.schema_args)})")
    return f"def {fname}({signature(op, True)}):\n" + "".join(f"    {s}\n" for s in body)


def outputs_source(op: Op, fname: str | None = None, checked: bool = False) -> str:
    """A function of the schema arguments returning freshly allocated outputs (the fake implementation; `checked`:
    checking the arguments first, devices included, `_check_source`)."""
    body = (_check_source(op, True) if checked else _dims_source(op)) + [
        f"{o.name} = {_alloc(op, o, True)}" for o in op.outs]
    lines = [f"def {fname or op.name}({signature(op, True)}):"] + [f"    {s}" for s in body]
    return "\n".join(lines + [f"    return {', '.join(o.name for o in op.outs)}"]) + "\n"


def requires_grad_source(op: Op, fname: str = "requires_grad") -> str:
    """A function of the schema's argument tuple: whether a tensor argument requires grad, one test per tensor
    position of the op, a list of tensors by a plain loop (about 4x faster than torch._C._any_requires_grad, which
    inspects every argument; the loop about half the time of any() over a generator).
    The trailing tensor forms of the u64 arguments are int64 tensors, which cannot require grad."""
    lines = []
    for i, a in enumerate(op.schema_args):
        if a.kind == "tensors":
            lines += [f"for t in args[{i}]:", "    if t.requires_grad:", "        return True"]
        elif a.kind in ("state", "tensor"):
            test = f"args[{i}].requires_grad"
            lines += [f"if {f'args[{i}] is not None and {test}' if a.optional else test}:", "    return True"]
    return f"def {fname}(args):\n" + "".join(f"    {line}\n" for line in lines + ["return False"])


def _anchor(op: Op) -> str:
    """The tensor giving the dtype code and device of a C call: the state, or (factory ops) the first output."""
    return op.state.name if op.state is not None else op.outs[0].name


_C_STRUCT = re.compile(r"(\w+)\((.*)\)$")
_C_ITEM = re.compile(r"(\w+)(?:\[([-\d:]+)\])?$")


def c_names(op: Op) -> set:
    """The argument, output, dim and literal names the C order of `op` uses (inside structs, without subscripts)."""
    names = set()
    for token in op.c:
        m = _C_STRUCT.match(token)
        for t in (m[2].split(",") if m else [token]):
            names.add(_C_ITEM.match(t)[1])
    return names


def _pointers(name: str, sub: str | None) -> str:
    """The pointers of a list of tensors: all, one (`name[i]`) or a slice (`name[a:b]`)."""
    if sub is None or ":" in sub:
        return f"[t.data_ptr() for t in {name if sub is None else f'{name}[{sub}]'}]"
    return f"{name}[{sub}].data_ptr()"


def _c_token(op: Op, token: str, target: str) -> str:
    if token == "dtype":
        return f"_dt({_anchor(op)})"
    m = _C_STRUCT.match(token)
    if m:
        return f"_C.{m[1]}({', '.join(_c_token(op, t, target) for t in m[2].split(','))})"
    name, sub = _C_ITEM.match(token).groups()
    out = next((o for o in op.outs if o.name == name), None)
    if out is not None:
        if out.like_list:
            return _pointers(name, sub)
        return f"_p({name})" if out.present_if else f"{name}.data_ptr()"
    try:
        a = op.arg(name)
    except StopIteration:
        return token  # a dim or a literal
    if a.kind == "tensors":
        return _pointers(name, sub)
    if a.kind in ("state", "tensor"):
        return f"_p({a.name})" if a.optional else f"{a.name}.data_ptr()"
    if a.kind == "u64":  # cpu: the value (a tensor's read on the host); cuda: (value, pointer or 0)
        return f"_u64({a.name})" if target == "cpu" else f"*_rng({a.name}, {a.name!r}, {_anchor(op)})"
    if a.kind in ("ints", "floats"):
        return f"[{a.kind[:-1]}(v) for v in {a.name}]"
    if a.kind == "threads":
        return f"_threads({a.name})" if target == "cpu" else f"int({a.name})"
    return {"float": "float({})", "int": "int({})", "bool": "bool({})"}[a.kind].format(a.name)


def _product_guard(op: Op) -> str:
    """`some output has elements`: products of dims > 0 (dims are >= 0), a product dropped when another one
    divides it (B * D > 0 implies B > 0)."""
    prods = list(dict.fromkeys(o.shape for o in op.outs if not o.like_list))
    keep = [p for p in prods if not any(q != p and all(q.count(d) <= p.count(d) for d in q) for q in prods)]
    return " or ".join(" * ".join(d if d.isidentifier() else f"({d})" for d in p) + " > 0" for p in keep)


def glue_source(op: Op, target: str) -> str:
    """Python source of the backend function of `op` for target "cpu" (fastsamp._C.cpu_<op>, n_threads last) or
    "cuda" (fastsamp._C.cuda_<op> through `_launch`, which makes the device current and appends the stream);
    no call when every output is empty."""
    body = _dims_source(op) + [f"{o.name} = {_alloc(op, o, False)}" for o in op.outs]
    named = c_names(op)
    c_args = [_c_token(op, t, target) for t in op.c] + [
        _c_token(op, o.name, target) for o in op.outs if o.name not in named]
    if target == "cpu" and not any(a.kind == "threads" and a.name in named for a in op.args):
        c_args.append("_threads()")
    body.append(f"if {op.guard or _product_guard(op)}:")
    if target == "cpu":
        body.append(f"    _C.cpu_{op.kernel}({', '.join(c_args)})")
    else:
        body.append(f"    _launch(_C.cuda_{op.kernel}, {_anchor(op)}, {', '.join(c_args)})")
    if op.guard:
        body.append("else:")
        for o in op.outs:
            zero = f"for t in {o.name}: t.zero_()" if o.like_list else f"{o.name}.zero_()"
            body.append(f"    if {o.name} is not None: {zero}" if o.present_if else f"    {zero}")
    ret = ", ".join(o.name for o in op.outs)
    lines = [f"def {op.name}({signature(op)}):"] + [f"    {s}" for s in body] + [f"    return {ret}"]
    return "\n".join(lines) + "\n"


def define(source: str, filename: str, namespace: dict) -> None:
    """Run generated source in `namespace`, its lines registered with linecache (tracebacks show them)."""
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)

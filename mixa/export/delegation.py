"""What runs inside ExecuTorch's XNNPACK delegate: rewrites that keep view-like ops in it, and the report of
what stays outside (``mixa export --output x.pte`` prints it).

Every op XNNPACK does not take runs in ExecuTorch's portable kernels between two delegate calls: a call site
outside the delegate costs the op itself plus a break in the delegated graph. torch's decompositions leave
several such ops that are only views or copies of a view, for which XNNPACK has an equivalent:

- ``expand_copy`` to the shape the tensor already has (every 4-D ``matmul`` decomposes into
  expand + view + bmm): dropped;
- ``squeeze_copy`` (timm's ``qkv.unbind(0)``) -> ``view_copy``;
- ``split_with_sizes_copy`` (a q/k/v split) -> one ``slice_copy`` per part;
- ``select_copy`` (the class token, ``x[:, 0]``) -> ``slice_copy`` + ``view_copy``.

Each rewrite gives the same values (views of the same memory, copied), so the program's maths is unchanged;
the .pte is verified against eager PyTorch after lowering as before. Needs executorch (function-level
imports).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional

# Call sites that are graph plumbing, not work: the delegate calls themselves and tuple unpacking.
_PLUMBING = ("executorch_call_delegate", "getitem")


def _shape(node) -> Optional[tuple]:
    value = node.meta.get("val") if hasattr(node, "meta") else None
    return tuple(value.shape) if hasattr(value, "shape") else None


def _replace(graph, node, target, args):
    with graph.inserting_before(node):
        new = graph.call_function(target, args)
    new.meta = dict(node.meta)
    return new


def keep_views_delegable(graph_module):
    """The rewrites of the module docstring, in place on an edge-dialect graph module; returns
    ``PassResult(graph_module, modified)`` (an ExecuTorch transform pass)."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from executorch.exir.pass_base import PassResult

    aten = exir_ops.edge.aten
    graph = graph_module.graph
    modified = False
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target == aten.expand_copy.default and _shape(node.args[0]) == _shape(node) is not None:
            node.replace_all_uses_with(node.args[0])
        elif node.target == aten.squeeze_copy.dims and _shape(node) is not None:
            node.replace_all_uses_with(_replace(graph, node, aten.view_copy.default,
                                                (node.args[0], list(_shape(node)))))
        elif node.target == aten.select_copy.int and _shape(node) is not None:
            source, dim, index = node.args
            size = _shape(source)[dim]
            index = index % size
            part = _replace(graph, node, aten.slice_copy.Tensor, (source, dim, index, index + 1, 1))
            part.meta["val"] = node.meta["val"].unsqueeze(dim)
            node.replace_all_uses_with(_replace(graph, node, aten.view_copy.default, (part, list(_shape(node)))))
        elif node.target == aten.split_with_sizes_copy.default:
            source, sizes = node.args[0], node.args[1]
            dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
            users = list(node.users)
            if not all(u.op == "call_function" and u.target.__name__ == "getitem" for u in users):
                continue
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            for user in users:
                i = user.args[1]
                part = _replace(graph, user, aten.slice_copy.Tensor,
                                (source, dim, starts[i], starts[i] + sizes[i], 1))
                user.replace_all_uses_with(part)
                graph.erase_node(user)
        else:
            continue
        graph.erase_node(node)
        modified = True
    if modified:
        graph.lint()
        graph_module.recompile()
    return PassResult(graph_module, modified)


def _module_path(node) -> str:
    """The innermost module that made ``node`` ('' for the model's own forward)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path[len("L['self']."):] if path.startswith("L['self'].") else path


@dataclass
class DelegationReport:
    """Call sites of a lowered program: ``delegate_calls`` XNNPACK subgraphs, and every op outside them
    (``outside``: op name -> count; ``by_module``: module path -> op name -> count)."""
    delegate_calls: int = 0
    outside: Dict[str, int] = field(default_factory=dict)
    by_module: Dict[str, Dict[str, int]] = field(default_factory=dict)

    @property
    def outside_total(self) -> int:
        return sum(self.outside.values())

    def in_modules(self, paths: List[str]) -> Dict[str, int]:
        """Outside ops made inside any of ``paths`` (e.g. the replaced attention layers)."""
        counts: Counter = Counter()
        for module, ops in self.by_module.items():
            if any(module == p or module.startswith(p + ".") for p in paths):
                counts.update(ops)
        return dict(counts)

    def as_dict(self) -> dict:
        return {"delegate_calls": self.delegate_calls, "outside_total": self.outside_total,
                "outside": self.outside, "by_module": self.by_module}

    def summary(self) -> str:
        """'12 call sites outside the XNNPACK delegate (in 14 delegate calls): native_layer_norm 5, ...'"""
        ops = ", ".join(f"{op} {n}" for op, n in self.outside.items())
        return (f"{self.outside_total} call site(s) outside the XNNPACK delegate ({self.delegate_calls} "
                f"delegate calls){': ' + ops if ops else ''}")


def _op_name(target) -> str:
    name = getattr(target, "__name__", str(target))
    return name[len("aten."):] if name.startswith("aten.") else name


def delegation_report(exported_program) -> DelegationReport:
    """Walk a lowered (edge) program's graph: delegate calls and every other op, by op and by module."""
    report = DelegationReport()
    outside: Counter = Counter()
    by_module: Dict[str, Counter] = {}
    for node in exported_program.graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = _op_name(node.target)
        if name == "executorch_call_delegate":
            report.delegate_calls += 1
        if name in _PLUMBING:
            continue
        outside[name] += 1
        by_module.setdefault(_module_path(node), Counter())[name] += 1
    report.outside = dict(outside.most_common())
    report.by_module = {m: dict(c.most_common()) for m, c in sorted(by_module.items())}
    return report

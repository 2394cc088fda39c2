"""Kernel revisions: a short hash of what a kernel's source says, not of how it is laid out or commented.

A tuned bucket records the revision of the kernel its config runs, so that `scaledmm tune` knows which
results a kernel edit has made stale (configs stay valid; only their times change). The revision of a
kernel covers its own source and that of every @triton.jit helper it calls, directly or through other
helpers, found by name in the module that calls them, and the values of the module-level constexprs
they name (the Gluon kernel's register counts). It hashes their syntax trees without docstrings:
comments, docstrings, line breaks, brackets and trailing commas that change nothing can be edited
without making any tuned bucket stale, while any change of code (a decorator's arguments included)
makes a new revision.

The trees are printed by `_dump`, not `ast.dump`, whose output gains fields from one Python version to
the next (`type_params` in 3.12) and would give one kernel a revision per Python version.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
import types

import triton
import triton.language as tl
from triton.runtime.jit import KernelInterface

REVISION_LENGTH = 12  # hexadecimal digits kept of the sha1


def _is_jit_function(value: object) -> bool:
    # A JITFunction, or in Triton's interpreter the InterpretedFunction that @triton.jit makes instead.
    return isinstance(value, KernelInterface) and inspect.isfunction(getattr(value, "fn", None))


def _tree(function: triton.JITFunction) -> ast.Module:
    """The function's syntax tree (decorators included), its docstrings removed."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function.fn)))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and ast.get_docstring(node):
            node.body = node.body[1:]
    return tree


def _dump(node: object) -> str:
    """The tree as text: each node's type and its fields, leaving out empty ones (None, []) so that
    fields a later Python adds, empty in our code, do not change the text; positions are not fields."""
    if isinstance(node, ast.AST):
        fields = (
            f"{name}={_dump(value)}" for name, value in ast.iter_fields(node) if value is not None and value != []
        )
        return f"{type(node).__name__}({', '.join(fields)})"
    if isinstance(node, list):
        return f"[{', '.join(_dump(item) for item in node)}]"
    return repr(node)


def _resolve(node: ast.AST, scope: dict) -> object:
    """The object a name or a dotted name (module.function) stands for in `scope`, or None."""
    if isinstance(node, ast.Name):
        return scope.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, scope)
        if isinstance(owner, types.ModuleType):
            return getattr(owner, node.attr, None)
    return None


def _constants(function: triton.JITFunction, tree: ast.Module) -> list[str]:
    """`name = value` of each module-level constexpr (gl.constexpr(40), say) that `function`'s source
    names, in order of first appearance: their values are compiled into the kernel as its code is."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(value := function.fn.__globals__.get(node.id), tl.constexpr):
            entry = f"{node.id} = {value.value!r}"
            if entry not in found:
                found.append(entry)
    return found


def _helpers(function: triton.JITFunction, tree: ast.Module) -> list[triton.JITFunction]:
    """The @triton.jit functions that `function`'s source names, in order of first appearance."""
    found = []
    for node in ast.walk(tree):
        value = _resolve(node, function.fn.__globals__)
        if _is_jit_function(value) and value is not function and value not in found:
            found.append(value)
    return found


def revision(kernel: triton.JITFunction) -> str:
    """The revision of `kernel`: a hash of its syntax tree and those of the helpers it calls (see the
    module docstring)."""
    digest = hashlib.sha1()
    pending, seen = [kernel], []
    while pending:
        function = pending.pop(0)
        if function in seen:
            continue
        seen.append(function)
        tree = _tree(function)
        digest.update(_dump(tree).encode() + b"\n")
        for constant in _constants(function, tree):  # none in a kernel without such globals: its hash as before
            digest.update(constant.encode() + b"\n")
        pending += _helpers(function, tree)
    return digest.hexdigest()[:REVISION_LENGTH]

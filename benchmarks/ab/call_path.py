"""How long the path of a scaled_mm call is: the scaledmm functions (and their modules) that a first
call, a repeated call and the first call of a new M run through, counted with a profiler in Triton's
interpreter (the kernels' own bodies, which the interpreter runs as Python, left out).

    PYTHONPATH=src python benchmarks/ab/call_path.py            # this tree
    PYTHONPATH=/path/to/other/src python benchmarks/ab/call_path.py   # another, to compare

docs/design.md ("How long the path is") quotes its output.
"""

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before scaledmm is imported

import torch

import scaledmm
from scaledmm.testing import make_operands

ROOT = os.path.dirname(scaledmm.__file__)


def jit_code() -> set:
    """(file, name) of every @triton.jit function of the package: the interpreter runs their bodies
    as Python (as code objects of its own), and they are the kernels' device code, not host hops."""
    import importlib
    import pkgutil
    import types

    import scaledmm.kernels

    codes = set()
    for info in pkgutil.iter_modules(scaledmm.kernels.__path__):
        module = importlib.import_module(f"scaledmm.kernels.{info.name}")
        jitted = [f.fn for f in vars(module).values() if isinstance(getattr(f, "fn", None), types.FunctionType)]
        codes |= {(fn.__code__.co_filename, fn.__name__) for fn in jitted}
    return codes


def path_of(call) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    device_code = jit_code()

    def profile(frame, event, arg):
        code = frame.f_code
        if (
            event == "call"
            and code.co_filename.startswith(ROOT)
            and (code.co_filename, code.co_name) not in device_code
        ):
            key = (os.path.relpath(code.co_filename, ROOT), code.co_name)
            if key not in seen:
                seen.append(key)

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return seen


def report(label: str, ops) -> None:
    args = ops.args()
    path = path_of(lambda: scaledmm.scaled_mm(*args, bias=ops.bias))
    modules = sorted({module for module, _ in path})
    print(f"{label}: {len(path)} functions in {len(modules)} modules ({', '.join(modules)})")
    for module, function in path:
        print(f"    {module}:{function}")


def main() -> None:
    torch.manual_seed(0)
    first = make_operands(24, 48, 96, torch.int8, "cpu")
    report("first call in the process", first)
    report("repeated call", first)
    report("first call of a new M (a new signature, warm process)", make_operands(40, 48, 96, torch.int8, "cpu"))


if __name__ == "__main__":
    main()

"""Kernel revisions change with a kernel's code, or its helpers' code, and with nothing else."""

import importlib
import sys
import textwrap

import pytest

from scaledmm.kernels.revision import revision

HELPER = """
@triton.jit
def helper(x, SCALE: tl.constexpr):
    return x * SCALE
"""

KERNEL = """
@triton.jit(do_not_specialize=["n"])
def kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.store(out_ptr + offs, helpers.helper(x, 2), mask=offs < n)
"""


def load_kernel(tmp_path, name, kernel_source, helper_source=HELPER):
    """The kernel defined by `kernel_source` in a module of its own, calling `helpers.helper`."""
    preamble = "import triton\nimport triton.language as tl\n"
    (tmp_path / name).mkdir()
    (tmp_path / name / "helpers.py").write_text(preamble + textwrap.dedent(helper_source))
    (tmp_path / name / "kernels.py").write_text(
        preamble + f"from {name} import helpers\n" + textwrap.dedent(kernel_source)
    )
    (tmp_path / name / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp_path))
    try:
        return importlib.import_module(f"{name}.kernels").kernel
    finally:
        sys.path.remove(str(tmp_path))
        for module in (name, f"{name}.helpers", f"{name}.kernels"):  # another test's package may take the name
            sys.modules.pop(module, None)


@pytest.fixture
def original(tmp_path):
    return revision(load_kernel(tmp_path, "original", KERNEL))


def test_revision_is_a_short_hexadecimal_hash(original):
    assert len(original) == 12 and int(original, 16) >= 0


@pytest.mark.parametrize(
    "edited",
    [
        KERNEL.replace("    offs =", "    # a new comment\n    offs =").replace("other=0.0)", "other=0.0)  # why"),
        KERNEL.replace("BLOCK: tl.constexpr):", 'BLOCK: tl.constexpr):\n    """A docstring."""'),
        KERNEL.replace(
            "x_ptr + offs, mask=offs < n, other=0.0)",
            "\n        (x_ptr + offs),\n        mask=offs < n,\n        other=0.0,\n    )",
        ),
        KERNEL.replace("    ", "        "),  # wider indentation
        "\n\n" + KERNEL + "\n# trailing comment\n",
    ],
    ids=["comments", "docstring", "line-breaks-brackets-commas", "indentation", "blank-lines"],
)
def test_comments_docstrings_and_layout_keep_the_revision(tmp_path, original, edited):
    assert revision(load_kernel(tmp_path, "edited", edited)) == original


def test_an_edited_docstring_keeps_the_revision(tmp_path):
    first = KERNEL.replace("BLOCK: tl.constexpr):", 'BLOCK: tl.constexpr):\n    """One docstring."""')
    second = KERNEL.replace("BLOCK: tl.constexpr):", 'BLOCK: tl.constexpr):\n    """Another,\n    longer."""')
    assert revision(load_kernel(tmp_path, "first", first)) == revision(load_kernel(tmp_path, "second", second))


@pytest.mark.parametrize(
    "kernel_source,helper_source",
    [
        (KERNEL.replace("other=0.0", "other=1.0"), HELPER),  # a constant
        (KERNEL.replace("helper(x, 2)", "helper(x, 3)"), HELPER),  # an argument
        (KERNEL.replace('do_not_specialize=["n"]', "do_not_specialize=[]"), HELPER),  # the decorator
        (KERNEL, HELPER.replace("x * SCALE", "x * SCALE + 1")),  # the helper it calls
    ],
    ids=["constant", "argument", "decorator", "helper"],
)
def test_code_changes_make_a_new_revision(tmp_path, original, kernel_source, helper_source):
    assert revision(load_kernel(tmp_path, "changed", kernel_source, helper_source)) != original


def test_a_module_constexpr_the_kernel_names_is_part_of_its_revision(tmp_path, original):
    # The Gluon kernel's register counts are such globals: a new value compiles to new code.
    def with_factor(name, value):
        source = f"FACTOR = tl.constexpr({value})\n" + KERNEL.replace("helper(x, 2)", "helper(x, FACTOR)")
        return revision(load_kernel(tmp_path, name, source))

    assert with_factor("two", 2) == with_factor("two_again", 2) != with_factor("three", 3)
    unnamed = "UNUSED = tl.constexpr(5)\n" + KERNEL  # a global the kernel does not name changes nothing
    assert revision(load_kernel(tmp_path, "unnamed", unnamed)) == original

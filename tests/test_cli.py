"""The `scaledmm` command's entry points that other test files do not cover."""

import pytest
from helpers import ON_GPU

from scaledmm.cli import main


@pytest.mark.skipif(ON_GPU, reason="on a GPU `demo` is a benchmark (tests/bench covers it)")
def test_demo_checks_the_kernels_without_a_gpu(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "through Triton's interpreter" in out and "all results within the error bound" in out
    assert out.count(" ok ") == 9


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("demo", "bench", "bench-model", "eval-model", "tune", "configs"):
        assert command in out

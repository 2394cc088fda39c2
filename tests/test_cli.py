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


@pytest.mark.parametrize("gpus", ["0", "-1", "two", "1.5", "99"])
def test_bench_model_rejects_a_bad_gpu_count_before_building_a_model(gpus, monkeypatch):
    import scaledmm.bench.model

    def no_model(*args, **kwargs):
        raise AssertionError("built a model")

    monkeypatch.setattr(scaledmm.bench.model, "build_decoder", no_model)
    with pytest.raises(SystemExit) as exit_:
        main(["bench-model", "--model", "llama3-8b", "--layers", "1", "--gpus", gpus])
    assert "--gpus" in str(exit_.value.code)


@pytest.mark.skipif(ON_GPU, reason="without CUDA only")
@pytest.mark.parametrize("gpus", ["2", "all"])
def test_bench_model_needs_cuda_for_several_gpus(gpus):
    with pytest.raises(SystemExit) as exit_:
        main(["bench-model", "--model", "llama3-8b", "--gpus", gpus])
    assert "--gpus" in str(exit_.value.code) and "no CUDA GPU" in str(exit_.value.code)

"""Block-scaled FP8 (1 x block_k activation groups, block_k x block_n weight blocks): the kernel
against the float64 reference within its bound, ragged K and N, every output dtype, any scale
strides, explicit configs, split-K (bitwise repeatable, nothing written outside the output, the
arrival counts handed back at zero); and every mismatch refused before launch, naming the argument."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from helpers import DEVICE, ON_GPU, PAD, padded_view, prepared_call

import scaledmm
from scaledmm import MatmulConfig, runtime
from scaledmm.configs import clear_cache
from scaledmm.kernels.matmul_block import bind_block_scaled_mm
from scaledmm.kernels.split_k import _arrivals
from scaledmm.testing import Operands, assert_close, make_block_operands

ROOT = Path(__file__).resolve().parents[2]


def call(ops, **kwargs):
    return scaledmm.scaled_mm(*ops.args(), bias=ops.bias, block_size=ops.block_size, **kwargs)


@pytest.mark.parametrize(
    "M,N,K,block_size",
    [
        (1, 256, 256, (128, 128)),  # decode, even blocks
        (20, 200, 300, (128, 128)),  # ragged K and N: partial last blocks
        (70, 96, 160, (64, 32)),  # small blocks, two tile rows
        (5, 48, 128, (48, 64)),  # block_n not a power of two
    ],
)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_matches_the_reference(M, N, K, block_size, out_dtype):
    ops = make_block_operands(M, N, K, DEVICE, block_size)
    assert_close(call(ops, out_dtype=out_dtype), ops)


@pytest.mark.parametrize("block_n", [130, 2**31 - 1])
@pytest.mark.parametrize("kernel", ["pointer", "swapped"])
def test_a_block_wider_than_n_is_one_scale_column_up_to_the_widest_block_n(block_n, kernel):
    # Any block_n >= N means the same product as block_n = N (whose float64 reference can be formed),
    # up to the 32-bit SCALE_N the kernels take; wider ones are refused (test_mismatches_...).
    ops = make_block_operands(5, 70, 200, DEVICE, (70, 128))
    config = MatmulConfig(16, 64, 128, split_k=2, kernel=kernel)
    out = scaledmm.scaled_mm(*ops.args(), bias=ops.bias, block_size=(block_n, 128), config=config)
    assert_close(out, ops)


def test_contiguous_scales_and_no_bias_and_an_explicit_config():
    ops = make_block_operands(40, 160, 256, DEVICE, (128, 128), bias_dtype=None)
    ops.scale_b = ops.scale_b.contiguous()  # [K blocks, N blocks] row-major instead of a transposed view
    config = MatmulConfig(16, 32, 128, group_m=2, num_warps=4, num_stages=2)
    assert_close(call(ops, config=config), ops)
    prepared = prepared_call(*ops.args(), bias=None, config=config, block_size=(128, 128))
    assert prepared.kernel == "block" and "block" in repr(prepared)


def test_a_repeated_call_reuses_its_prepared_launch_with_new_data():
    clear_cache()
    first, second = (
        make_block_operands(8, 128, 256, DEVICE, gen=torch.Generator(DEVICE).manual_seed(s)) for s in (1, 2)
    )
    assert_close(call(first), first)
    assert_close(call(second), second)
    assert len(runtime.prepared) == 1


@pytest.mark.parametrize(
    "M,N,K,block_size,split_k,bias",
    [
        (1, 256, 512, (128, 128), 2, True),  # decode, even blocks
        (20, 200, 300, (128, 128), 3, True),  # ragged K and N: partial last blocks, one block per split
        (5, 96, 160, (64, 32), 4, False),  # 5 blocks in splits of 2: the last split gets none
        (3, 48, 96, (48, 32), 8, True),  # 3 blocks: five of the eight splits get none
        (70, 96, 160, (64, 32), 2, False),  # two tile rows
        (5, 130, 520, (64, 128), 2, True),  # ragged N and K in 64-row scale blocks: one scale per swapped tile
        (7, 200, 300, (96, 128), 2, True),  # 96-row scale blocks: one scale per pointer tile of 32, ragged N
    ],
    ids=str,
)
@pytest.mark.parametrize("kernel", ["pointer", "swapped"])
def test_split_k_matches_the_reference_repeats_bitwise_and_writes_only_its_output(
    M, N, K, block_size, split_k, bias, kernel
):
    ops = make_block_operands(M, N, K, DEVICE, block_size, bias_dtype=torch.bfloat16 if bias else None)
    _, a = padded_view(ops.a, float("nan"))  # a read outside the operands would bring NaN in
    _, b = padded_view(ops.b, float("nan"))
    ops = Operands(a, b, ops.scale_a, ops.scale_b, ops.bias, block_size)
    block_n = 64 if kernel == "swapped" else 32  # the swapped form's weight rows: an fp8 wgmma's 64 on sm_90
    config = MatmulConfig(16, block_n, block_size[1], num_warps=4, num_stages=3, split_k=split_k, kernel=kernel)
    outs = []
    for _ in range(3):
        out_buf, out = padded_view(torch.empty(M, N, dtype=torch.bfloat16, device=DEVICE), float("nan"))
        if not outs:  # the first launch, then the bound launch again with new scratch
            launch = bind_block_scaled_mm(*ops.args(), ops.bias, out, config, block_size)
        else:
            launch(*ops.args(), ops.bias, out)
        outside = torch.ones_like(out_buf, dtype=torch.bool)
        outside[PAD : PAD + M, PAD : PAD + N] = False
        assert out_buf[outside].isnan().all(), "the kernel wrote outside its output"
        assert not out.isnan().any(), "some output elements were not written"
        outs.append(out)
    assert_close(outs[0], ops)
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], atol=0, rtol=0)
    assert not _arrivals(a.device, 1).any(), "a launch left its arrival counts set"


@pytest.mark.parametrize(
    "M,N,K,block_size",
    [
        (1, 256, 512, (128, 128)),  # decode, even blocks
        (20, 200, 300, (128, 128)),  # ragged K and N, two token tiles
        (3, 48, 96, (48, 32)),  # block_n not a power of two, a weight tile over two blocks
        (5, 130, 520, (64, 128)),  # each 64-row tile in one scale block (its scale a scalar), ragged N and K
    ],
    ids=str,
)
def test_the_swapped_form_runs_through_scaled_mm_and_its_prepared_launch(M, N, K, block_size):
    ops = make_block_operands(M, N, K, DEVICE, block_size)
    config = MatmulConfig(16, 64, block_size[1], num_warps=4, num_stages=3, kernel="swapped")
    clear_cache()
    assert_close(call(ops, config=config), ops)
    prepared = prepared_call(*ops.args(), bias=ops.bias, config=config, block_size=block_size)
    assert prepared.kernel == "block" and prepared.config.kernel == "swapped"


def test_the_swapped_form_at_mid_m_with_128_token_tiles():
    # The tuner offers swapped tiles of up to 128 tokens up to M = 256 (tune/space.BLOCK_SWAP_MAX_M):
    # two token tiles here, the second ragged, split over K, partial last blocks.
    ops = make_block_operands(150, 130, 300, DEVICE, (128, 128))
    config = MatmulConfig(128, 64, 128, num_warps=4, num_stages=3, split_k=2, kernel="swapped")
    assert_close(call(ops, config=config), ops)


@pytest.mark.skipif(ON_GPU, reason="watches the loads of Triton's interpreter")
@pytest.mark.parametrize("kernel", ["pointer", "swapped"])
def test_a_split_without_blocks_loads_nothing_outside_the_tensors(monkeypatch, kernel):
    # 5 K blocks in 4 splits of 2: the last split has none and starts past the last block. A load
    # there whose value goes unused (a prefetched scale) changes no result, so the loads are watched.
    from triton.runtime import interpreter

    from scaledmm.kernels import matmul_block

    ops = make_block_operands(5, 130, 520, DEVICE, (64, 128), bias_dtype=torch.bfloat16)
    out = torch.empty(5, 130, dtype=torch.bfloat16)
    tensors = [ops.a, ops.b, ops.scale_a, ops.scale_b, ops.bias, out]
    make_buffers = matmul_block.split_k_buffers

    def buffers(*args, **kwargs):  # the launch's partial sums may be read too
        made = make_buffers(*args, **kwargs)
        tensors.extend(made)
        return made

    outside = []
    masked_load = interpreter.InterpreterBuilder.create_masked_load

    def watched(self, ptrs, mask, other, *rest):
        spans = [(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in tensors]
        loaded = ptrs.data[mask.data.astype(bool)]
        outside.extend(int(p) for p in loaded if not any(0 <= int(p) - start < size for start, size in spans))
        return masked_load(self, ptrs, mask, other, *rest)

    monkeypatch.setattr(matmul_block, "split_k_buffers", buffers)
    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_masked_load", watched)
    config = MatmulConfig(16, 64, 128, num_warps=4, num_stages=3, split_k=4, kernel=kernel)
    bind_block_scaled_mm(*ops.args(), ops.bias, out, config, (64, 128))
    assert not outside, f"{len(outside)} loads outside the tensors"
    assert_close(out, ops)


def test_split_k_runs_through_scaled_mm_and_its_prepared_launch():
    clear_cache()
    config = MatmulConfig(16, 64, 128, num_warps=4, num_stages=3, split_k=4)
    first, second = (
        make_block_operands(4, 192, 640, DEVICE, gen=torch.Generator(DEVICE).manual_seed(s)) for s in (1, 2)
    )
    assert_close(call(first, config=config), first)
    assert_close(call(second, config=config), second)  # the prepared launch, new data and new partials
    prepared = prepared_call(*second.args(), bias=second.bias, config=config, block_size=(128, 128))
    assert prepared.kernel == "block" and prepared.config.split_k == 4
    assert len(runtime.prepared) == 1


def test_a_split_k_config_whose_scratch_is_too_large_is_refused():
    # 16 splits of 129 x 64 tiles of 16 x 32 fp32: 258 MiB, over the 256 MiB an explicit config may take.
    ops = make_block_operands(2064, 2048, 128, DEVICE)
    config = MatmulConfig(16, 32, 128, split_k=16)
    clear_cache()
    with pytest.raises(ValueError, match="split_k=16 needs 258 MiB of partial sums"):
        call(ops, config=config)
    assert not runtime.prepared


@pytest.mark.skipif(ON_GPU, reason="compiles for sm_90 through a stand-in driver, on a host without a GPU")
def test_the_split_k_and_swapped_kernels_compile_for_sm90():
    # The split form's ending (an acq_rel arrival count) is in the code only with SPLIT_K > 1; both
    # forms run fp8 wgmma on a 64-row tile. At 16 tokens the swapped form runs fp8 wgmma too (64
    # weight rows by 16 tokens), where the unswapped 16-row tile does not. Compiled in a process of
    # its own: this one runs Triton's interpreter.
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT / "src")
    with tempfile.TemporaryDirectory() as tmp:
        env["TRITON_CACHE_DIR"] = tmp
        result = subprocess.run([sys.executable, "-c", COMPILE_SPLITS], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    facts = json.loads(result.stdout.splitlines()[-1])
    assert facts == {
        "1": {"wgmma": True, "arrival": False},
        "4": {"wgmma": True, "arrival": True},
        "swapped": {"wgmma": True, "arrival": False},
        "16 rows": {"wgmma": False, "arrival": False},
    }


COMPILE_SPLITS = """
import json, torch
from scaledmm import MatmulConfig
from scaledmm.kernels import matmul_block
from scaledmm.testing import make_block_operands, sm90_target
ops = make_block_operands(64, 2112, 7168, "cpu")
out = torch.empty(64, 2112, dtype=torch.bfloat16)
facts = {}
with sm90_target():
    for split_k in (1, 4):
        config = MatmulConfig(64, 64, 128, num_warps=4, num_stages=4, split_k=split_k)
        grid, args, kwargs = matmul_block.block_launch_arguments(*ops.args(), ops.bias, out, config, (128, 128))
        ptx = matmul_block._block_scaled_mm_kernel.warmup(*args, grid=grid, **kwargs).asm["ptx"]
        wgmma = "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3" in ptx
        facts[split_k] = {"wgmma": wgmma, "arrival": "atom.global.gpu.acq_rel.add.u32" in ptx}
ops = make_block_operands(16, 2112, 7168, "cpu")
out = torch.empty(16, 2112, dtype=torch.bfloat16)
with sm90_target():
    for name, kernel in (("swapped", "swapped"), ("16 rows", "pointer")):
        config = MatmulConfig(16, 64, 128, num_warps=4, num_stages=4, kernel=kernel)
        grid, args, kwargs = matmul_block.block_launch_arguments(*ops.args(), ops.bias, out, config, (128, 128))
        function = matmul_block.BLOCK_KERNEL_FUNCTIONS[kernel]
        ptx = function.warmup(*args, grid=grid, **kwargs).asm["ptx"]
        wgmma = "wgmma.mma_async.sync.aligned.m64n16k32.f32.e4m3.e4m3" in ptx
        facts[name] = {"wgmma": wgmma, "arrival": "atom.global.gpu.acq_rel.add.u32" in ptx}
print(json.dumps(facts))
"""


@pytest.mark.parametrize(
    "change,error,words",
    [
        ("int8", TypeError, "block_size is for fp8"),
        ("scale_a per token", ValueError, r"scale_a must be \[M, ceil\(K / block_k\)\]"),
        ("scale_b short", ValueError, r"scale_b must be \[ceil\(K / block_k\), ceil\(N / block_n\)\]"),
        ("scale bf16", TypeError, "scale_a must be float32 with block_size"),
        ("block_k 100", ValueError, "block_k in"),
        ("block_n 2**31", ValueError, r"block_n in \[1, 2\*\*31 - 1\]"),  # over the kernels' 32-bit SCALE_N
        ("block_size 3 values", TypeError, "block_size must be a pair"),
        ("torch backend", ValueError, "backend='torch' cannot compute this call"),
        ("config of another block_k", ValueError, "config must be a pointer or swapped config with block_k = 128"),
        ("tma config", ValueError, "config must be a pointer or swapped config with block_k = 128"),
    ],
)
def test_mismatches_are_refused_before_launch(change, error, words):
    ops = make_block_operands(8, 128, 256, DEVICE)
    kwargs = dict(bias=ops.bias, block_size=ops.block_size)
    a, b, scale_a, scale_b = ops.args()
    if change == "int8":
        a, b = torch.zeros_like(a, dtype=torch.int8), torch.zeros_like(b, dtype=torch.int8)
    elif change == "scale_a per token":
        scale_a = scale_a[:, :1]
    elif change == "scale_b short":
        scale_b = scale_b[:, :0]
    elif change == "scale bf16":
        scale_a = scale_a.bfloat16()
    elif change == "block_k 100":
        kwargs["block_size"] = (128, 100)
    elif change == "block_n 2**31":
        kwargs["block_size"] = (2**31, 128)
    elif change == "block_size 3 values":
        kwargs["block_size"] = (128, 128, 1)
    elif change == "torch backend":
        kwargs["backend"] = "torch"
    elif change == "tma config":
        kwargs["config"] = MatmulConfig(64, 128, 128, kernel="tma")
    else:
        kwargs["config"] = MatmulConfig(16, 32, 64)
    clear_cache()
    with pytest.raises(error, match=words):
        scaledmm.scaled_mm(a, b, scale_a, scale_b, **kwargs)
    with pytest.raises(error, match=words):  # the registered op checks the same
        blocks = kwargs["block_size"]
        config = kwargs.get("config")
        torch.ops.scaledmm.scaled_mm(
            a, b, scale_a, scale_b, kwargs["bias"], torch.bfloat16, None if config is None else config.as_list(),
            kwargs.get("backend", "auto"), "fast", list(blocks),
        )  # fmt: skip
    assert not runtime.prepared

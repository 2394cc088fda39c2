"""The warp-specialised kernels of issue 17: Triton's own (matmul_tma.scaled_mm_tma_ws_kernel) and the
Gluon kernel (matmul_gluon). Without a GPU: the Triton variant runs in the interpreter; the Gluon kernel
(which has no interpreter) is checked for its argument plumbing and compiled for sm_90 on the host.
On a Hopper GPU both run and are compared with the float64 reference."""

import re
import subprocess
import tempfile

import pytest
import torch
from helpers import DEVICE, ON_GPU

import scaledmm
from scaledmm import MatmulConfig
from scaledmm.kernels import matmul, matmul_gluon, matmul_tma
from scaledmm.kernels.matmul_gluon import GluonConfig, bind_scaled_mm_gluon, launch_arguments
from scaledmm.testing import assert_close, make_operands, sm90_target
from scaledmm.tune.space import GLUON_CONFIGS

E4M3 = torch.float8_e4m3fn
BF16 = torch.bfloat16
ON_HOPPER = ON_GPU and torch.cuda.get_device_capability()[0] == 9
SHARED_MEMORY_SM90 = 232448  # bytes a program may use on an H100/H200


def cpu_operands(M, N, K, dtype, out_dtype=torch.bfloat16, per_token=True, per_channel=True, bias=True):
    """Empty CPU tensors of a call's dtypes and layouts (the plumbing reads no values)."""
    a = torch.empty(M, K, dtype=dtype)
    b = torch.empty(N, K, dtype=dtype).t()
    scale_a = torch.empty(M, 1) if per_token else torch.empty(())
    scale_b = torch.empty(1, N) if per_channel else torch.empty(())
    bias = torch.empty(N, dtype=torch.bfloat16) if bias else None
    return a, b, scale_a, scale_b, bias, torch.empty(M, N, dtype=out_dtype)


# ----------------------------------------------------------------------------------------- Gluon: plumbing


@pytest.mark.parametrize(
    "fields, error",
    [
        (dict(consumer_groups=3), ValueError),
        (dict(block_m=64, consumer_groups=2), ValueError),  # 32 rows per warpgroup
        (dict(block_n=96), ValueError),
        (dict(num_stages=1), ValueError),
        (dict(epilogue_split=2, block_n=64), ValueError),  # 32-column accumulators
        (dict(block_m=128, block_n=256, consumer_groups=1), ValueError),  # 256 accumulators per thread
        (dict(instr_n=96), ValueError),  # does not divide 256
        (dict(block_k=128.0), TypeError),
        (dict(schedule="stream-k"), ValueError),
        (dict(consumer_groups=1, block_n=128, schedule="pingpong"), ValueError),  # ping-pong takes two
        (dict(schedule="pingpong"), ValueError),  # a whole 128 x 256 tile per warpgroup: 256 accumulators
        (dict(store_n=96), ValueError),  # does not divide 256
        (dict(store_n=16, block_n=64), ValueError),  # 16-column chunks
        (dict(store_n=32), ValueError),  # 8 chunks of an accumulator
    ],
)
def test_config_rejects_what_the_kernel_cannot_run(fields, error):
    with pytest.raises(error):
        GluonConfig(**fields)


def test_config_defaults_and_name():
    config = GluonConfig()
    assert (config.num_warps, config.accumulator_n, config.chunk_n, config.store_buffers) == (8, 256, 256, 1)
    assert str(GluonConfig(128, 256, 128, 4, 2, 2)) == "128x256x128 g8 c2 s4 e2 gluon"
    chunked = GluonConfig(128, 256, 128, 4, 2, store_n=64)
    assert (chunked.chunk_n, chunked.store_buffers, str(chunked)) == (64, 2, "128x256x128 g8 c2 s4 st64 gluon")
    pingpong = GluonConfig(128, 128, 128, 5, 2, schedule="pingpong")
    assert (pingpong.num_warps, pingpong.tile_groups) == (4, 1)  # the second warpgroup is a worker partition
    assert str(pingpong) == "128x128x128 g8 c2 s5 pp gluon"
    assert GluonConfig(64, 256, 128, 4, 2, store_n=64, schedule="pingpong").block_m == 64  # 64 rows per warpgroup


def test_instruction_n():
    assert matmul_gluon.instruction_n(GluonConfig(), E4M3) == 256
    assert matmul_gluon.instruction_n(GluonConfig(), torch.int8) == 128
    assert matmul_gluon.instruction_n(GluonConfig(epilogue_split=2, num_stages=4), E4M3) == 128
    assert matmul_gluon.instruction_n(GluonConfig(instr_n=64), torch.int8) == 64
    assert matmul_gluon.instruction_n(GluonConfig(), E4M3, precise=True) == 128  # n = 256 spills in the K loop
    assert matmul_gluon.instruction_n(GluonConfig(instr_n=256), E4M3, precise=True) == 256  # as asked
    with pytest.raises(ValueError, match="int8"):
        matmul_gluon.instruction_n(GluonConfig(instr_n=256), torch.int8)


@pytest.mark.parametrize("dtype", [E4M3, torch.int8], ids=["e4m3", "int8"])
@pytest.mark.parametrize("precise", [False, True], ids=["fast", "precise"])
def test_launch_arguments(dtype, precise):
    M, N, K = 1000, 600, 320
    a, b, scale_a, scale_b, bias, out = cpu_operands(M, N, K, dtype)
    config = GluonConfig(128, 256, 128, 4, 2, 2, group_m=4)
    grid, args, kwargs = launch_arguments(a, b, scale_a, scale_b, bias, out, config, num_sms=132, precise=precise)
    assert grid == (8 * 3,)  # fewer tiles than SMs: one program per tile
    a_desc, b_desc, out_desc = args[:3]
    assert (a_desc.shape, a_desc.strides, a_desc.block_shape) == ([M, K], [K, 1], [128, 128])
    assert (b_desc.shape, b_desc.strides, b_desc.block_shape) == ([N, K], [K, 1], [256, 128])
    assert b_desc.base.data_ptr() == b.data_ptr()
    assert (out_desc.shape, out_desc.strides, out_desc.block_shape) == ([M, N], [N, 1], [128, 128])
    assert args[3:] == (scale_a, scale_b, bias, 1, 1, 1, 4, grid[0])
    assert str(kwargs["ACC_DTYPE"]) == ("int32" if dtype == torch.int8 else "fp32")
    assert kwargs["MAX_IMPRECISE"] == (128 if precise and dtype == E4M3 else None)
    assert (kwargs["INSTR_N"], kwargs["NUM_STAGES"], kwargs["num_warps"]) == (128, 4, 8)
    assert (kwargs["SPLIT"], kwargs["STORE_BUFFERS"], kwargs["PINGPONG"]) == (2, 1, False)
    assert "maxnreg" not in kwargs  # Triton 3.6 sets it from the warps (168 at 12) and moves registers itself


def test_launch_arguments_of_chunked_stores_and_pingpong():
    a, b, scale_a, scale_b, bias, out = cpu_operands(1000, 600, 320, E4M3)
    config = GluonConfig(64, 256, 128, 4, 2, store_n=64, schedule="pingpong")
    grid, args, kwargs = launch_arguments(a, b, scale_a, scale_b, bias, out, config, num_sms=132, precise=False)
    assert grid == (16 * 3,)
    assert args[2].block_shape == [64, 64]  # one output box per 64-column chunk
    assert (kwargs["SPLIT"], kwargs["STORE_BUFFERS"], kwargs["PINGPONG"], kwargs["num_warps"]) == (1, 2, True, 4)
    assert (kwargs["A_PER_TOKEN"], kwargs["B_PER_CHANNEL"], kwargs["HAS_BIAS"]) == (True, True, True)


def test_launch_arguments_per_tensor_scales_without_bias():
    args = cpu_operands(300, 256, 256, E4M3, per_token=False, per_channel=False, bias=False)
    a, b, scale_a, scale_b, bias, out = args
    grid, args, kwargs = launch_arguments(a, b, scale_a, scale_b, bias, out, GluonConfig(), 132, False)
    assert grid == (3,)
    assert args[5:9] == (None, 0, 0, 0)
    assert (kwargs["A_PER_TOKEN"], kwargs["B_PER_CHANNEL"], kwargs["HAS_BIAS"]) == (False, False, False)


def test_gluon_refuses_calls_it_cannot_serve():
    a, b, scale_a, scale_b, bias, out = cpu_operands(64, 64, 64, E4M3)
    if not ON_HOPPER:
        assert not matmul_gluon.gluon_eligible(a, b, out, a.device)
        with pytest.raises(ValueError, match="Hopper"):
            bind_scaled_mm_gluon(a, b, scale_a, scale_b, bias, out, GluonConfig())
    with pytest.raises(TypeError, match="GluonConfig"):
        bind_scaled_mm_gluon(a, b, scale_a, scale_b, bias, out, MatmulConfig(128, 128, 128, kernel="tma"))
    device = torch.device("cuda", 0) if ON_HOPPER else a.device
    mixed = torch.empty(64, 64, dtype=torch.float8_e5m2)
    assert not matmul_gluon.gluon_eligible(a, mixed.t(), out, device)  # B of another dtype
    assert not matmul_gluon.gluon_eligible(a, b, out.to(torch.float8_e4m3fn), device)  # an fp8 output


# ----------------------------------------------------------------------------------------- Gluon: sm_90 code


def spilled_bytes(compiled) -> int:
    """Local memory per thread (spills) of a compiled kernel, as cuobjdump reports it."""
    import triton

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run(
            [triton.knobs.nvidia.cuobjdump.path, "-res-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    stack, local = re.search(r"STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", usage).groups()
    return int(stack) + int(local)


FP8_N256 = "m64n256k32.f32.e4m3.e4m3"
FP8_N128 = "m64n128k32.f32.e4m3.e4m3"
INT8_N128 = "m64n128k32.s32.s8.s8"


@pytest.mark.sm90_compile
@pytest.mark.skipif(ON_GPU, reason="the GPU tests run the kernel itself")
@pytest.mark.parametrize(
    "dtype, config, out_dtype, precise, instruction, spills",
    [
        # A whole 128 x 256 accumulator's epilogue spills at the 232 registers the MMA warps get...
        (E4M3, GluonConfig(128, 256, 128, 3, 2), torch.bfloat16, False, FP8_N256, True),
        # ... in 64-column chunks it does not, nor in precise accumulation with n = 128 (instruction_n).
        (E4M3, GluonConfig(128, 256, 128, 4, 2, store_n=64), torch.bfloat16, False, FP8_N256, False),
        (E4M3, GluonConfig(128, 256, 128, 4, 2, store_n=64), torch.bfloat16, True, FP8_N128, False),
        (E4M3, GluonConfig(128, 256, 128, 4, 2, 2), torch.bfloat16, True, FP8_N128, False),
        (torch.int8, GluonConfig(128, 128, 128, 4, 1), torch.float32, False, INT8_N128, False),
        (E4M3, GluonConfig(128, 128, 128, 5, 2, schedule="pingpong"), torch.bfloat16, True, FP8_N128, False),
        (torch.int8, GluonConfig(64, 256, 128, 4, 2, store_n=64, schedule="pingpong"), BF16, False, INT8_N128, False),
    ],
    ids=str,
)  # fmt: skip
def test_gluon_kernel_compiles_for_sm90(dtype, config, out_dtype, precise, instruction, spills):
    # Ragged M, N and K: nothing in the compiled code depends on them.
    args = cpu_operands(1000, 2856, 4000, dtype, out_dtype)
    with sm90_target():
        grid, positional, kwargs = launch_arguments(*args, config, num_sms=132, precise=precise)
        compiled = matmul_gluon.scaled_mm_gluon_kernel.warmup(*positional, grid=grid, **kwargs)
    ptx = compiled.asm["ptx"]
    assert f"wgmma.mma_async.sync.aligned.{instruction}" in ptx
    # Triton moves registers itself: the load warp's warpgroup down to 40, the MMA warpgroups up to 232.
    assert "setmaxnreg.dec.sync.aligned.u32 \t40" in ptx or "setmaxnreg.inc.sync.aligned.u32 \t40" in ptx
    if config.consumer_groups == 2:
        assert "setmaxnreg.dec.sync.aligned.u32 \t232" in ptx
    assert len(re.findall(r"cp\.async\.bulk\.tensor\.2d\.shared::cluster\.global", ptx)) == 2  # A and B by TMA
    stores_per_tile = config.block_n // config.chunk_n  # one TMA store per chunk
    mma_partitions = 2 if config.schedule == "pingpong" else 1
    assert len(re.findall(r"cp\.async\.bulk\.tensor\.2d\.global\.shared::cta", ptx)) == stores_per_tile * mma_partitions
    assert compiled.metadata.num_warps == 4 * config.consumer_groups + 4  # the load warp's warpgroup on top
    assert compiled.metadata.shared <= SHARED_MEMORY_SM90
    assert (spilled_bytes(compiled) > 0) == spills


# ----------------------------------------------------------------------------------------- as a config kind


def test_a_gluon_matmul_config_is_the_gluon_config_of_its_fields():
    pingpong = MatmulConfig(64, 256, 128, group_m=4, num_warps=4, num_stages=4, kernel="gluon", pingpong=True,
                            store_n=64)  # fmt: skip
    assert GluonConfig.from_matmul_config(pingpong) == GluonConfig(
        64, 256, 128, 4, 2, group_m=4, store_n=64, schedule="pingpong"
    )
    cooperative = MatmulConfig(128, 256, 128, num_warps=8, num_stages=4, kernel="gluon")
    assert GluonConfig.from_matmul_config(cooperative) == GluonConfig(128, 256, 128, 4, 2)
    one_group = GluonConfig.from_matmul_config(MatmulConfig(128, 128, 128, num_warps=4, num_stages=4, kernel="gluon"))
    assert (one_group.consumer_groups, one_group.num_warps) == (1, 4)
    for config in GLUON_CONFIGS:  # the kernel's num_warps is the config's, whatever the schedule
        assert GluonConfig.from_matmul_config(config).num_warps == config.num_warps
    with pytest.raises(ValueError, match="kernel='gluon'"):
        GluonConfig.from_matmul_config(MatmulConfig(128, 128, 128, kernel="tma"))


PINGPONG = MatmulConfig(128, 128, 128, num_warps=4, num_stages=5, kernel="gluon", pingpong=True, store_n=64)


def kernel_chosen(monkeypatch, args, config, hopper=True, fits=True):
    """The name of the kernel matmul.py binds for a CPU call under `config`, as on a Hopper GPU (or
    not) where the Gluon kernel's compiled form fits shared memory (or not): the decision, no launch."""
    monkeypatch.setattr(matmul_gluon, "device_has_wgmma", lambda device: hopper)
    monkeypatch.setattr(matmul_gluon, "fits_in_shared_memory", lambda *_: fits)
    a = args[0]
    kernel, _, positional, kwargs, leading = matmul._kernel_and_arguments(*args, config, False, a.device)
    return matmul.KERNEL_NAMES[kernel], positional, kwargs, leading


def test_a_gluon_config_runs_the_gluon_kernel_where_the_call_allows(monkeypatch):
    args = cpu_operands(1000, 600, 320, E4M3)
    name, positional, kwargs, leading = kernel_chosen(monkeypatch, args, PINGPONG)
    assert (name, leading, kwargs["PINGPONG"], kwargs["STORE_BUFFERS"], kwargs["num_warps"]) == ("gluon", 6, True, 2, 4)
    assert positional[2].block_shape == [128, 64]  # the output box of a 64-column chunk
    # Elsewhere the same tiles run the TMA kernel, or the pointer kernel where TMA cannot serve either.
    assert kernel_chosen(monkeypatch, args, PINGPONG, hopper=False)[0] == "tma"
    assert kernel_chosen(monkeypatch, args, PINGPONG, fits=False)[0] == "tma"  # an fp32 output, say
    name, positional, kwargs, _ = kernel_chosen(monkeypatch, cpu_operands(1000, 600, 328, E4M3), PINGPONG)
    assert name == "pointer"  # K = 328: rows of A are not 16-byte aligned
    assert (kwargs["BLOCK_M"], kwargs["BLOCK_N"], kwargs["BLOCK_K"], kwargs["num_warps"]) == (128, 128, 128, 4)
    assert kernel_chosen(monkeypatch, cpu_operands(64, 64, 64, E4M3, torch.float8_e4m3fn), PINGPONG)[0] == "tma"


def test_a_bound_gluon_launch_rebuilds_only_the_descriptors_base():
    # The per-call path: the first call's descriptors over the new tensors, as `descriptors` makes them.
    config = GluonConfig.from_matmul_config(PINGPONG)
    a, b, _, _, _, out = cpu_operands(1000, 600, 320, torch.int8)
    first = matmul_gluon.descriptors(a, b, out, config)
    a2, b2, _, _, _, out2 = cpu_operands(1000, 600, 320, torch.int8)
    for made, rebased in zip(
        matmul_gluon.descriptors(a2, b2, out2, config), matmul_gluon.call_descriptors(first, a2, b2, out2)
    ):
        assert made.__dict__.keys() == rebased.__dict__.keys()
        assert rebased.base.data_ptr() == made.base.data_ptr() and rebased.base.shape == made.base.shape
        assert {k: v for k, v in made.__dict__.items() if k != "base"} == {
            k: v for k, v in rebased.__dict__.items() if k != "base"
        }
    assert first[0].base is a  # the first call's descriptors are untouched


def test_an_explicit_gluon_config_computes_the_product(monkeypatch):
    # In the interpreter (and on GPUs other than Hopper) the tiles run the TMA kernel; on Hopper, Gluon's.
    ops = make_operands(200, 136, 256, E4M3, DEVICE)
    scaledmm.clear_cache()
    assert_close(scaledmm.scaled_mm(*ops.args(), bias=ops.bias, config=PINGPONG), ops)
    from scaledmm import runtime

    (call,) = [c for c in runtime.prepared.values() if getattr(c, "config", None) == PINGPONG]
    assert call.kernel == ("gluon" if ON_HOPPER else "tma")
    scaledmm.clear_cache()


@pytest.mark.sm90_compile
@pytest.mark.skipif(ON_GPU, reason="the GPU tests run the kernel itself")
@pytest.mark.parametrize("dtype", [E4M3, torch.int8], ids=["e4m3", "int8"])
@pytest.mark.parametrize("config", GLUON_CONFIGS, ids=str)
def test_the_tuners_gluon_configs_compile_for_sm90_without_spills(dtype, config):
    args = cpu_operands(1000, 2856, 4000, dtype)
    with sm90_target():
        grid, positional, kwargs = launch_arguments(
            *args, GluonConfig.from_matmul_config(config), num_sms=132, precise=False
        )
        compiled = matmul_gluon.scaled_mm_gluon_kernel.warmup(*positional, grid=grid, **kwargs)
    assert compiled.metadata.shared <= SHARED_MEMORY_SM90
    assert spilled_bytes(compiled) == 0


# ----------------------------------------------------------------------------------------- on a Hopper GPU

GPU_CONFIGS = [
    GluonConfig(128, 256, 128, 3, 2),
    GluonConfig(128, 256, 128, 4, 2, 2),
    GluonConfig(128, 128, 128, 4, 1),
    GluonConfig(256, 128, 128, 3, 2, group_m=1),
    GluonConfig(128, 256, 128, 4, 2, store_n=64),
    GluonConfig(128, 256, 128, 4, 2, 2, store_n=64),  # two accumulators, two chunks each
    GluonConfig(128, 128, 128, 5, 2, schedule="pingpong"),
    GluonConfig(64, 256, 128, 4, 2, store_n=64, schedule="pingpong", group_m=1),
]


@pytest.mark.skipif(not ON_HOPPER, reason="the Gluon kernel runs on Hopper GPUs only")
@pytest.mark.parametrize("dtype", [E4M3, torch.int8], ids=["e4m3", "int8"])
@pytest.mark.parametrize("config", GPU_CONFIGS, ids=str)
# (4096, 4096, 256): about 8 tiles of two K steps per program, so the ring wraps within and across
# tiles and ping-pong's warpgroups take many turns.
@pytest.mark.parametrize("M,N,K", [(1000, 2856, 4000), (4096, 1024, 512), (4096, 4096, 256), (1, 64, 32)])
def test_gluon_kernel_matches_the_reference(dtype, config, M, N, K):
    ops = make_operands(M, N, K, dtype, DEVICE)
    out = torch.full((M, N), float("nan"), dtype=torch.bfloat16, device=DEVICE)
    launch = bind_scaled_mm_gluon(*ops.args(), ops.bias, out, config)
    assert_close(out, ops)
    again = make_operands(M, N, K, dtype, DEVICE)
    launch(*again.args(), again.bias, out)  # the bound launch, new tensors of the same signature
    assert_close(out, again)


@pytest.mark.skipif(not ON_HOPPER, reason="the Gluon kernel runs on Hopper GPUs only")
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("per_token, per_channel, bias", [(False, False, False), (True, False, True)])
@pytest.mark.parametrize("accumulation", ["fast", "precise"])
@pytest.mark.parametrize(
    "config", [GluonConfig(128, 256, 128, 3, 2, 2), GluonConfig(128, 128, 128, 3, 2, store_n=64, schedule="pingpong")]
)
def test_gluon_kernel_epilogue_forms(out_dtype, per_token, per_channel, bias, accumulation, config):
    ops = make_operands(
        300, 520, 1040, E4M3, DEVICE, per_token=per_token, per_channel=per_channel,
        bias_dtype=torch.bfloat16 if bias else None,
    )  # fmt: skip
    out = torch.empty(300, 520, dtype=out_dtype, device=DEVICE)
    bind_scaled_mm_gluon(*ops.args(), ops.bias, out, config, accumulation == "precise")
    assert_close(out, ops, accumulation)


# ----------------------------------------------------------------------------------------- Triton's WS variant


# Interpreter-sized tiles on the CPU; on a GPU the tiles Triton splits between two MMA warpgroups.
WS_CASES = (
    [
        (1000, 2856, 4000, MatmulConfig(128, 256, 128, num_warps=4, num_stages=3, kernel="tma")),  # ragged
        (300, 520, 1040, MatmulConfig(128, 128, 128, group_m=2, num_warps=4, num_stages=4, kernel="tma")),
    ]
    if ON_GPU
    else [
        (37, 72, 80, MatmulConfig(32, 32, 32, group_m=2, num_warps=4, num_stages=2, kernel="tma")),  # ragged
        (130, 48, 64, MatmulConfig(64, 32, 32, num_warps=4, num_stages=3, kernel="tma")),
    ]
)


@pytest.mark.parametrize("dtype", [E4M3, torch.int8], ids=["e4m3", "int8"])
@pytest.mark.parametrize("M,N,K,config", WS_CASES, ids=str)
def test_tma_ws_kernel_matches_the_reference(dtype, M, N, K, config):
    if ON_GPU and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("tensor descriptors need Hopper")
    if ON_GPU:
        # It never returned on an H200 at 128x256 w4 s3 (benchmarks/results/h200-2026-12-01/
        # warp_specialize_quick_hang.log): a hang would stop the whole suite. Run it by hand.
        pytest.skip("Triton's warp-specialised variant hung on an H200; not run in the suite")
    ops = make_operands(M, N, K, dtype, DEVICE)
    out = torch.full((M, N), float("nan"), dtype=torch.bfloat16, device=DEVICE)
    grid, args, kwargs = matmul_tma.ws_launch_arguments(*ops.args(), ops.bias, out, config, num_sms=4, precise=False)
    matmul_tma.scaled_mm_tma_ws_kernel[grid](*args, **kwargs)
    assert_close(out, ops)

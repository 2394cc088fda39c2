"""The kernel's memory behaviour: it writes its whole output and nothing else, reads nothing outside
its operands, and addresses tensors of more than 2**31 elements."""

import pytest
import torch
from helpers import DEVICE, ON_GPU, PAD, padded_view

import scaledmm
from scaledmm import MatmulConfig, select_config
from scaledmm.kernels import matmul, matmul_tma
from scaledmm.kernels.matmul import compile_scaled_mm, launch_scaled_mm
from scaledmm.testing import Operands, assert_close, make_operands


def poison_value(dtype):
    # Reading a poisoned element must change the result visibly: NaN for fp8 (it propagates),
    # the largest int8 for int8 (the result then leaves the error bound).
    return 127 if dtype == torch.int8 else float("nan")


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn], ids=["int8", "e4m3"])
@pytest.mark.parametrize("a_col,b_col", [(False, True), (True, False)], ids=["aR-bC", "aC-bR"])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(
    "M,N,K,config",
    [
        (33, 130, 257, None),  # the heuristic's config for this shape
        (37, 45, 70, MatmulConfig(16, 32, 32, group_m=2, num_warps=2, num_stages=2)),
        (37, 45, 70, MatmulConfig(16, 32, 32, group_m=2, num_warps=2, num_stages=2, split_k=2)),
        (5, 130, 96, MatmulConfig(16, 64, 64, num_warps=4, num_stages=2, kernel="swapped")),  # one tile row, swapped
        (37, 45, 70, MatmulConfig(16, 32, 32, num_warps=4, num_stages=2, kernel="swapped")),  # three tile rows
        (37, 45, 70, MatmulConfig(16, 32, 32, num_warps=4, num_stages=2, split_k=2, kernel="swapped")),
        (37, 130, 300, MatmulConfig(16, 64, 64, num_warps=4, num_stages=3, split_k=2, kernel="swapped")),  # wgmma-sized
    ],
    ids=str,
)
def test_writes_whole_output_and_nothing_outside(dtype, a_col, b_col, out_dtype, M, N, K, config):
    ops = make_operands(M, N, K, dtype, DEVICE, a_column_major=a_col, b_column_major=b_col)
    poison = poison_value(dtype)
    _, a = padded_view(ops.a, poison)
    _, b = padded_view(ops.b, poison)
    out_poison = float("nan")
    out_buf, out = padded_view(torch.empty(M, N, dtype=out_dtype, device=DEVICE), out_poison)
    out.fill_(out_poison)
    config = config or select_config(M, N, K, dtype, DEVICE)

    launch_scaled_mm(a, b, ops.scale_a, ops.scale_b, ops.bias, out, config)

    assert not out.isnan().any(), "some output elements were not written"
    assert_close(out, Operands(a, b, ops.scale_a, ops.scale_b, ops.bias))
    outside = torch.ones_like(out_buf, dtype=torch.bool)
    outside[PAD : PAD + M, PAD : PAD + N] = False
    assert out_buf[outside].isnan().all(), "the kernel wrote outside its output"


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn], ids=["int8", "e4m3"])
@pytest.mark.parametrize("kernel", ["pointer", "swapped"])
def test_offsets_beyond_int32(dtype, kernel):
    # Row strides of 2**27 put the last of 17 rows at element 2**31 of a and of out: 32-bit offset
    # arithmetic would wrap there. The buffers are allocated but only the used rows are touched.
    M, N, K, row_stride = 17, 16, 32, 2**27
    small = make_operands(M, N, K, dtype, DEVICE)
    a_store = torch.empty((M - 1) * row_stride + K, dtype=dtype, device=DEVICE)
    a = a_store.as_strided((M, K), (row_stride, 1))
    a.copy_(small.a)
    out_store = torch.empty((M - 1) * row_stride + N, dtype=torch.bfloat16, device=DEVICE)
    out = out_store.as_strided((M, N), (row_stride, 1))
    out.fill_(float("nan"))

    config = MatmulConfig(16, 16, 32, kernel=kernel)
    launch_scaled_mm(a, small.b, small.scale_a, small.scale_b, small.bias, out, config)

    assert_close(out, Operands(a, small.b, small.scale_a, small.scale_b, small.bias))


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn], ids=["int8", "e4m3"])
@pytest.mark.parametrize(
    "split_k,K",
    [(2, 256), (3, 257), (8, 96)],
    ids=["even", "ragged-K", "idle-splits"],  # 96 is 3 K steps of 32: five of the eight splits get none
)
@pytest.mark.parametrize("kernel", ["pointer", "swapped"])
def test_split_k_is_correct_and_repeats_bitwise(dtype, split_k, K, kernel):
    M, N = 20, 70
    ops = make_operands(M, N, K, dtype, DEVICE)
    config = MatmulConfig(16, 32, 32, split_k=split_k, kernel=kernel)
    outs = []
    for _ in range(2):
        outs.append(torch.empty(M, N, dtype=torch.bfloat16, device=DEVICE))
        launch_scaled_mm(*ops.args(), ops.bias, outs[-1], config)
    assert_close(outs[0], ops)
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)


def test_split_k_leaves_its_arrival_counts_zeroed():
    """The counts are shared by every split-K launch on a stream: each launch must hand them back at zero."""
    from scaledmm.kernels.split_k import _arrivals

    ops = make_operands(40, 100, 256, torch.int8, DEVICE)
    for split_k in (2, 4):
        out = torch.empty(40, 100, dtype=torch.bfloat16, device=DEVICE)
        launch_scaled_mm(*ops.args(), ops.bias, out, MatmulConfig(16, 32, 32, split_k=split_k))
        assert_close(out, ops)
    assert not _arrivals(ops.a.device, 1).any()


@pytest.mark.skipif(not ON_GPU, reason="streams and CUDA graphs are CUDA's")
def test_split_k_on_other_streams_and_in_cuda_graphs(monkeypatch):
    from scaledmm.kernels import split_k

    monkeypatch.setattr(split_k, "_MIN_ARRIVAL_SLOTS", 64)
    config = MatmulConfig(16, 32, 64, split_k=4)
    ops = make_operands(16, 256, 1024, torch.float8_e4m3fn, DEVICE)
    out = torch.empty(16, 256, dtype=torch.bfloat16, device=DEVICE)
    launch_scaled_mm(*ops.args(), ops.bias, out, config)
    device = ops.a.device

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        graph_out = torch.empty_like(out)
        launch_scaled_mm(*ops.args(), ops.bias, graph_out, config)  # warm-up: makes this stream's counts
        counts = split_k._arrivals(device, 1)
    torch.cuda.synchronize()
    assert counts.data_ptr() != split_k._arrivals(device, 1).data_ptr()  # each stream its own
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        launch_scaled_mm(*ops.args(), ops.bias, graph_out, config)
    with torch.cuda.stream(stream):  # grows this stream's buffer: the graph keeps the old one
        big = make_operands(16, 64 * 32 + 1, 1024, torch.float8_e4m3fn, DEVICE)
        big_out = torch.empty(16, 64 * 32 + 1, dtype=torch.bfloat16, device=DEVICE)
        launch_scaled_mm(*big.args(), big.bias, big_out, config)
    torch.cuda.synchronize()
    assert_close(big_out, big)
    for _ in range(3):  # every replay must find the counts zeroed by the one before: no memset was captured
        graph_out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(graph_out, out, atol=0, rtol=0)
        assert not counts.any()


def test_a_grown_arrival_buffer_keeps_the_old_one(monkeypatch):
    """Captured graphs hold the old buffer's address: growing must not free it."""
    from scaledmm.kernels import split_k

    monkeypatch.setattr(split_k, "_MIN_ARRIVAL_SLOTS", 1)
    monkeypatch.setattr(split_k, "_arrival_counts", {})
    monkeypatch.setattr(split_k, "_retired_counts", [])
    small = split_k._arrivals(torch.device(DEVICE), 2)
    grown = split_k._arrivals(torch.device(DEVICE), 5)
    assert grown.numel() == 5 and split_k._retired_counts == [small]
    assert split_k._arrivals(torch.device(DEVICE), 3) is grown


# ----------------------------------------------------------------------------- the TMA kernel

ALIGNED_PAD = 16  # elements: keeps a padded view's data pointer and row stride 16-byte aligned


def aligned_padded_view(src: torch.Tensor, fill) -> tuple[torch.Tensor, torch.Tensor]:
    """Like padded_view, with the padding TMA needs: 16-byte aligned data pointer and row stride."""
    column_major = src.stride(0) == 1 and src.shape[1] > 1
    rows, cols = src.shape if not column_major else src.shape[::-1]
    buf = torch.full((rows + 2 * ALIGNED_PAD, cols + 2 * ALIGNED_PAD), fill, dtype=torch.float32, device=DEVICE)
    buf = buf.to(src.dtype)
    view = buf[ALIGNED_PAD : ALIGNED_PAD + rows, ALIGNED_PAD : ALIGNED_PAD + cols]
    view = view.t() if column_major else view
    view.copy_(src)
    return buf, view


@pytest.fixture
def tma_launches(monkeypatch):
    """Counts the launches (and compilations ahead) that take the TMA kernel."""
    count = []
    choose = matmul._kernel_and_arguments

    def counted(*args, **kwargs):
        chosen = choose(*args, **kwargs)
        if chosen[0] is matmul_tma.scaled_mm_tma_kernel:
            count.append(1)
        return chosen

    monkeypatch.setattr(matmul, "_kernel_and_arguments", counted)
    return count


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn], ids=["int8", "e4m3"])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(
    "M,N,K,config",
    [
        (37, 72, 80, MatmulConfig(32, 32, 32, group_m=2, num_warps=4, num_stages=2, kernel="tma")),  # ragged M, N, K
        (130, 48, 64, MatmulConfig(64, 32, 32, group_m=8, num_warps=4, num_stages=3, kernel="tma")),
        (8, 40, 48, MatmulConfig(16, 16, 32, group_m=1, num_warps=4, num_stages=2, kernel="tma")),
    ],
)
def test_tma_kernel_writes_whole_output_and_nothing_outside(tma_launches, dtype, out_dtype, M, N, K, config):
    ops = make_operands(M, N, K, dtype, DEVICE)
    _, a = aligned_padded_view(ops.a, poison_value(dtype))
    _, b = aligned_padded_view(ops.b, poison_value(dtype))
    out_buf, out = aligned_padded_view(torch.empty(M, N, dtype=out_dtype, device=DEVICE), float("nan"))
    assert matmul_tma.tma_eligible(a, b, out, a.device) == (not ON_GPU or torch.cuda.get_device_capability() >= (9, 0))

    launch_scaled_mm(a, b, ops.scale_a, ops.scale_b, ops.bias, out, config)

    assert len(tma_launches) == int(matmul_tma.tma_eligible(a, b, out, a.device))
    assert not out.isnan().any(), "some output elements were not written"
    assert_close(out, Operands(a, b, ops.scale_a, ops.scale_b, ops.bias))
    outside = torch.ones_like(out_buf, dtype=torch.bool)
    outside[ALIGNED_PAD : ALIGNED_PAD + M, ALIGNED_PAD : ALIGNED_PAD + N] = False
    assert out_buf[outside].isnan().all(), "the kernel wrote outside its output"


@pytest.mark.parametrize(
    "per_token,per_channel,bias_dtype",
    [(False, False, None), (True, False, torch.float32), (False, True, torch.float16)],
)
def test_tma_kernel_scale_and_bias_modes(tma_launches, per_token, per_channel, bias_dtype):
    ops = make_operands(
        50, 64, 96, torch.float8_e4m3fn, DEVICE, per_token=per_token, per_channel=per_channel, bias_dtype=bias_dtype
    )
    out = scaledmm.scaled_mm(*ops.args(), torch.bfloat16, ops.bias, config=MatmulConfig(32, 32, 32, kernel="tma"))
    assert_close(out, ops)
    assert len(tma_launches) == int(not ON_GPU or torch.cuda.get_device_capability() >= (9, 0))


@pytest.mark.parametrize(
    "why,K,b_col",
    [("row-major b", 64, False), ("K of 40 bytes", 40, True)],
)
def test_tma_config_runs_the_pointer_kernel_where_tma_cannot(tma_launches, why, K, b_col):
    ops = make_operands(24, 32, K, torch.int8, DEVICE, b_column_major=b_col)
    out = scaledmm.scaled_mm(*ops.args(), torch.bfloat16, ops.bias, config=MatmulConfig(16, 32, 32, kernel="tma"))
    assert_close(out, ops)
    assert tma_launches == [], why


@pytest.mark.skipif(not ON_GPU, reason="compiles for the GPU's shared memory")
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_every_tma_candidate_runs_correctly(tma_launches, out_dtype):
    # The tuner times TMA candidates with bf16 outputs: there each must run the TMA kernel. An fp32
    # output stages twice the bytes in shared memory; a config that then does not fit runs the pointer
    # kernel, and the result is right either way.
    from scaledmm.configs import device_limits
    from scaledmm.tune.space import candidate_configs

    M, N, K = 300, 512, 256
    num_sms, shared = device_limits(torch.device(DEVICE))
    ops = make_operands(M, N, K, torch.float8_e4m3fn, DEVICE)
    configs = [c for c in candidate_configs(4096, N, K, shared, num_sms) if c.kernel == "tma"]
    assert configs
    for config in configs:
        out = torch.empty(M, N, dtype=out_dtype, device=DEVICE)
        launch_scaled_mm(*ops.args(), ops.bias, out, config)
        assert_close(out, ops)
    if out_dtype == torch.bfloat16 and torch.cuda.get_device_capability() >= (9, 0):
        assert len(tma_launches) == len(configs)


@pytest.mark.skipif(not ON_GPU, reason="compiles for a CUDA device")
def test_tma_kernel_compiles_ahead_from_meta_tensors(tma_launches):
    # The tuner's compile workers hold no data: meta tensors must take the TMA kernel as the GPU would.
    meta = dict(device="meta")
    a = torch.empty(256, 512, dtype=torch.float8_e4m3fn, **meta)
    b = torch.empty(384, 512, dtype=torch.float8_e4m3fn, **meta).t()
    out = torch.empty(256, 384, dtype=torch.bfloat16, **meta)
    scale_a, scale_b = torch.empty(256, 1, **meta), torch.empty(1, 384, **meta)
    compile_scaled_mm(
        a, b, scale_a, scale_b, None, out, MatmulConfig(128, 128, 128, num_warps=4, num_stages=3, kernel="tma")
    )
    assert len(tma_launches) == int(torch.cuda.get_device_capability() >= (9, 0))


@pytest.mark.parametrize(
    "M,config,preload",
    [
        (1, MatmulConfig(16, 32, 256), True),  # decode: one tile row, small tile
        (64, MatmulConfig(64, 128, 256), True),
        (128, MatmulConfig(128, 64, 128), True),
        (128, MatmulConfig(128, 128, 128, num_warps=8), False),  # held through the loop, it cost ~9%
        (65, MatmulConfig(64, 32, 256), False),  # two tile rows
    ],
    ids=str,
)
def test_the_epilogue_is_loaded_before_the_k_loop_for_one_row_of_small_tiles(M, config, preload):
    ops = make_operands(M, 160, 256, torch.float8_e4m3fn, DEVICE)
    out = torch.empty(M, 160, dtype=torch.bfloat16, device=DEVICE)
    _, _, kwargs = matmul._launch_arguments(*ops.args(), ops.bias, out, None, None, config, False)
    assert kwargs["PRELOAD_EPILOGUE"] is preload


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn], ids=["int8", "e4m3"])
@pytest.mark.parametrize("M", [5, 40], ids=["preloaded", "loaded-after"])  # one tile row of 16, or three
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_split_k_with_the_epilogue_loaded_before_or_after_the_loop(dtype, M, bias):
    ops = make_operands(M, 70, 200, dtype, DEVICE, bias_dtype=torch.bfloat16 if bias else None)
    out = torch.full((M, 70), float("nan"), dtype=torch.bfloat16, device=DEVICE)
    launch_scaled_mm(*ops.args(), ops.bias, out, MatmulConfig(16, 32, 32, split_k=3))
    assert_close(out, ops)


@pytest.mark.parametrize(
    "config,kernel,revision",
    [
        (MatmulConfig(16, 64, 128), matmul._scaled_mm_kernel, matmul.REVISIONS["pointer"]),
        (MatmulConfig(16, 64, 128, kernel="swapped"), matmul._scaled_mm_swap_kernel, matmul.REVISIONS["swapped"]),
    ],
    ids=["pointer", "swapped"],
)
def test_a_swapped_config_runs_the_swapped_kernel_under_its_own_revision(config, kernel, revision):
    ops = make_operands(3, 96, 256, torch.float8_e4m3fn, DEVICE)
    out = torch.empty(3, 96, dtype=torch.bfloat16, device=DEVICE)
    chosen = matmul._kernel_and_arguments(*ops.args(), ops.bias, out, config, False, ops.a.device)
    assert chosen[0] is kernel
    assert matmul.kernel_revision(config) == revision
    assert len(set(matmul.REVISIONS.values())) == len(matmul.REVISIONS) == 4


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn], ids=["int8", "e4m3"])
@pytest.mark.parametrize(
    "per_token,per_channel,bias_dtype",
    [(True, True, torch.bfloat16), (False, False, None), (True, False, torch.float32), (False, True, None)],
)
@pytest.mark.parametrize("M", [9, 40], ids=["one-token-tile", "three-token-tiles"])
def test_swapped_kernel_scale_and_bias_modes(dtype, per_token, per_channel, bias_dtype, M):
    ops = make_operands(M, 80, 160, dtype, DEVICE, per_token=per_token, per_channel=per_channel, bias_dtype=bias_dtype)
    config = MatmulConfig(16, 64, 64, num_warps=4, num_stages=2, kernel="swapped")
    assert_close(scaledmm.scaled_mm(*ops.args(), torch.bfloat16, ops.bias, config=config), ops)

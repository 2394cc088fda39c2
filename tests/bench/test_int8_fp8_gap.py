"""The int8 wgmma probe of benchmarks/ab/int8_fp8_gap.py (issue 17): its PTX rewrite, and what Triton 3.6
and the probe compile the pointer kernel's K loop to for sm_90 (no GPU needed)."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import ON_GPU

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "ab"))
import int8_fp8_gap as gap  # noqa: E402  (a benchmark script, beside the A/B that imports it)

ACC = "{%r10, %r11}"
INT8_LOOP = f"""\
	mov.b32 	%r10, 0;
$L__BB0_2:
	wgmma.fence.sync.aligned;
	wgmma.mma_async.sync.aligned.m64n8k32.s32.s8.s8 {ACC}, %rd1, %rd2, %p1, 1, 1;
	wgmma.commit_group.sync.aligned;
	wgmma.wait_group.sync.aligned 0;
	add.s32 	%r3, %r3, 1;
	@%p2 bra 	$L__BB0_2;
$L__BB0_3:
	cvt.rn.f32.s32 	%r20, %r10;
	ret;
"""


def test_probe_keeps_one_k_step_in_flight_and_waits_before_the_accumulator_is_read():
    ptx, relaxed, added = gap.async_int8_ptx(INT8_LOOP)
    lines = [line.strip() for line in ptx.splitlines()]
    assert relaxed == 1
    commit = lines.index("wgmma.commit_group.sync.aligned;")
    assert lines[commit + 1] == "wgmma.wait_group.sync.aligned 1;"  # the K step's wait, as fp8's
    # After the loop (a label: control may come with a wgmma in flight) the accumulator is read only
    # once every wgmma retired; nothing is in flight at `ret` any more, so no other wait is added.
    cvt = lines.index("cvt.rn.f32.s32 \t%r20, %r10;")
    assert lines[cvt - 1] == "wgmma.wait_group.sync.aligned 0;"
    assert added == 1
    assert lines.count("wgmma.wait_group.sync.aligned 0;") == 1


def test_probe_leaves_other_ptx_alone():
    fp8 = INT8_LOOP.replace(".s32.s8.s8", ".f32.e4m3.e4m3")
    assert gap.async_int8_ptx(fp8) == (fp8, 0, 0)


@pytest.mark.skipif(ON_GPU, reason="compiles for sm_90 through a stand-in driver, on a host without a GPU")
def test_triton_keeps_int8_wgmma_synchronous_and_the_probe_does_not():
    # The cause of the mid-M gap: fp8 waits for all but one K step's wgmma (1), int8 for all (0). If a
    # Triton upgrade fails this test by making int8 asynchronous, re-tune int8 and re-run the A/B.
    # Compiled in a process of its own: this one runs Triton's interpreter (TRITON_INTERPRET).
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "benchmarks" / "ab")])
    with tempfile.TemporaryDirectory() as tmp:
        env["TRITON_CACHE_DIR"] = tmp
        result = subprocess.run([sys.executable, "-c", COMPILE_WAITS], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {"fp8": "1", "int8": "0", "int8a": "1"}


COMPILE_WAITS = """
import json, tempfile
from pathlib import Path
import int8_fp8_gap as gap
from scaledmm import MatmulConfig
config = MatmulConfig(64, 64, 128, group_m=8, num_warps=4, num_stages=3)
with gap.sm90_compilation(), tempfile.TemporaryDirectory() as tmp:
    print(json.dumps({d: gap.compile_one(config, d, Path(tmp), None)["wait"] for d in ("fp8", "int8", "int8a")}))
"""

import os

import torch

# Without a GPU the kernels run on CPU tensors through Triton's interpreter, which must be chosen
# before any kernel module is imported. With a GPU the same tests run compiled on CUDA.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    # Triton 3.6's interpreter leaves triton.language's builtins patched after a kernel calls a
    # @triton.jit helper (interpreter.InterpretedFunction.__call__ drops its patch scope), and a later
    # compile in the same process then fails inside tl.cdiv. So the tests that compile for sm_90 on
    # the CPU (marked sm90_compile) run before any kernel runs in the interpreter.
    items.sort(key=lambda item: item.get_closest_marker("sm90_compile") is None)

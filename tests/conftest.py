import os

import torch

# Without a GPU the kernels run on CPU tensors through Triton's interpreter, which must be chosen
# before any kernel module is imported. With a GPU the same tests run compiled on CUDA.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

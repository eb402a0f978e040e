"""Will it fit? Model architectures, the memory estimator (one function per phase of a training
step), hardware and advice, and the teaching views.

Reading order: ``architectures`` (the numbers that decide memory), ``step`` (one training step's
settings), ``state`` (persistent: weights, adapters, gradients, optimizer states), ``forward`` (what
each layer saves, the loss buffers), ``timeline`` (forward, backward, optimizer step; the peak),
``estimator`` (:func:`estimate_memory` ties them together), then ``inference``, ``hardware``,
``advice``, ``cli`` and ``viz``. ``cuda`` names what a CUDA stack keeps alive beyond the CPU path
(with sources), ``published`` checks the estimator against PEFT's published GPU measurements, and
``gpu_check`` is ``make gpu-check``.
"""

# The package's public names: imported from here by notebooks, tests and other packages.
from ftlab.memory.advice import advise, worked_example_7b
from ftlab.memory.architectures import ARCHITECTURES, Architecture, get_architecture
from ftlab.memory.cli import cli_main
from ftlab.memory.estimator import estimate_memory
from ftlab.memory.hardware import HARDWARE
from ftlab.memory.inference import estimate_inference_memory
from ftlab.memory.state import nf4_bytes_per_parameter, nf4_constant_bytes
from ftlab.memory.step import DTYPE_BYTES

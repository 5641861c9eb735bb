"""Whether Triton runs interpreted on the CPU (TRITON_INTERPRET, read by triton when it is imported).

Read as Triton's `getenv_bool` reads it (triton 3.6 and 3.9): "1", "true", "on", "yes" or "y", in any case, mean
on; anything else ("0", "false", "off", ...) off. Plain Python rather than `triton.knobs`, whose C++ reader
torch.compile cannot trace (a graph break in every compiled call of the scan).
"""

import os

_ON = ("1", "true", "on", "yes", "y")


def triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").lower() in _ON
